/** edgeq TypeScript client: EdgeqClient (every RPC), Worker, the error helpers and
 * CommittedNotReplicatedError; generated types in ./gen. */
export {
  EdgeqClient, type ClientOptions, type DurabilityLevel, type EnqueueOptions, type JobSpecInit, type ProgressReport, type TlsOptions,
} from "./client.js";
export {
  AUTO_KEY_PREFIX,
  COMMITTED_NOT_REPLICATED,
  CommittedNotReplicatedError,
  EDGE_LOG_FULL,
  ERROR_DOMAIN,
  autoIdempotencyKey,
  errorInfo,
  errorField,
  errorReason,
  retryDelayMs,
  type ErrorInfo,
} from "./errors.js";
export { FailError, RetryError, Worker, type Handler, type HandlerResult, type ReportProgress, type WorkerOptions } from "./worker.js";
export { TRACER_NAME } from "./tracing.js";
export { RETRY_POLICY, retryPolicyOf, type RetryPolicy } from "./retry-policy.js";
export * from "./gen/edgeq/v1/queue_pb.js";
