/** edgeq TypeScript client: EdgeqClient (every RPC) and Worker; generated types in ./gen. */
export { EdgeqClient, type ClientOptions, type JobSpecInit } from "./client.js";
export { FailError, RetryError, Worker, type Handler, type WorkerOptions } from "./worker.js";
export * from "./gen/edgeq/v1/queue_pb.js";
