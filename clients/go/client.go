// Package edgeq is the Go client for edgeq: Client wraps every QueueService RPC with a
// deadline, bearer-token metadata and gRPC's service-config retry of UNAVAILABLE; Worker
// (worker.go) holds a Lease stream and runs a handler. The generated stubs are in
// github.com/edgeq/edgeq/clients/go/edgeq/v1 (regenerate with `bash scripts/gen`).
//
// Retried writes never duplicate: Enqueue sends an idempotency key for every job (the
// caller's, or "auto-<UUIDv7>" generated once per job before the first attempt), and every
// write the server answers ABORTED with reason COMMITTED_NOT_REPLICATED (committed on the
// primary, replicas not confirmed in time) is resent unchanged within the call's deadline
// (errors.go); the server dedupes it. Past the deadline the call returns a
// *CommittedNotReplicatedError (errors.Is(err, ErrCommittedNotReplicated)); Reason(err) is
// the ErrorInfo reason of any failed call.
package edgeq

import (
	"context"
	"crypto/tls"
	_ "embed"
	"errors"
	"fmt"
	"strings"
	"time"

	edgeqv1 "github.com/edgeq/edgeq/clients/go/edgeq/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	dpb "google.golang.org/protobuf/types/known/durationpb"
)

// DefaultTimeout is the deadline of a unary call whose context has none.
const DefaultTimeout = 10 * time.Second

// serviceConfig is gRPC's retry policy for unary calls (UNAVAILABLE: 5 attempts, backoff
// 0.1 s doubling to 2 s, honouring grpc-retry-pushback-ms): service_config.json, a copy of
// clients/service-config.json that every SDK loads (docs/worker-contract.md §8).
//
//go:embed service_config.json
var serviceConfig string

// Option configures Dial.
type Option func(*Client)

// WithToken sends "authorization: Bearer <token>" on every call.
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

// WithTimeout sets the deadline for unary calls whose context has none.
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithDurability sets when this client's Enqueues are acknowledged:
// edgeqv1.Durability_DURABILITY_LOCAL (stored on the primary), _REPLICATED (and confirmed
// by replicas) or _EDGE (durable in the answering node's edge log, even while no primary
// is reachable). Unset (DURABILITY_UNSPECIFIED) is the server's default (its --durability).
// EnqueueOptions.Durability overrides it per call.
func WithDurability(d edgeqv1.Durability) Option { return func(c *Client) { c.durability = d } }

// WithTLS connects over TLS with cfg: RootCAs for a private CA (nil: the system roots),
// Certificates for a server that requires client certificates (mTLS), ServerName when it
// differs from the host dialled. A target "edgeqs://host:port" means TLS too (with
// &tls.Config{} when WithTLS is not given); "edgeq://host:port" and a bare "host:port"
// are plaintext unless WithTLS is given.
func WithTLS(cfg *tls.Config) Option {
	return func(c *Client) {
		if cfg == nil {
			cfg = &tls.Config{}
		}
		c.tls = cfg
	}
}

// WithDialOptions adds gRPC dial options (e.g. TLS credentials, replacing insecure ones).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *Client) { c.dialOpts = append(c.dialOpts, opts...) }
}

// Client calls one edgeq server (any node of a cluster).
type Client struct {
	conn     *grpc.ClientConn
	raw      edgeqv1.QueueServiceClient
	timeout  time.Duration
	token    string
	tls      *tls.Config
	dialOpts []grpc.DialOption
	// durability is the EnqueueRequest.durability sent when a call sets none.
	durability edgeqv1.Durability
}

// Dial connects lazily to target ("host:port", or "edgeqs://host:port" for TLS).
func Dial(target string, opts ...Option) (*Client, error) {
	c := &Client{timeout: DefaultTimeout}
	for _, o := range opts {
		o(c)
	}
	switch {
	case strings.HasPrefix(target, "edgeqs://"):
		target = strings.TrimPrefix(target, "edgeqs://")
		if c.tls == nil {
			c.tls = &tls.Config{}
		}
	case strings.HasPrefix(target, "edgeq://"):
		if c.tls != nil {
			return nil, fmt.Errorf("edgeq: %q means plaintext; use edgeqs:// (or host:port) with WithTLS", target)
		}
		target = strings.TrimPrefix(target, "edgeq://")
	}
	transport := insecure.NewCredentials()
	if c.tls != nil {
		transport = credentials.NewTLS(c.tls)
	}
	dial := append([]grpc.DialOption{
		grpc.WithTransportCredentials(transport),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
	}, c.dialOpts...)
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, err
	}
	c.conn, c.raw = conn, edgeqv1.NewQueueServiceClient(conn)
	return c, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Raw is the generated stub, for anything this type does not wrap.
func (c *Client) Raw() edgeqv1.QueueServiceClient { return c.raw }

func (c *Client) withToken(ctx context.Context) context.Context {
	if c.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.token)
	}
	return ctx
}

func (c *Client) unary(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx = c.withToken(ctx)
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.timeout)
}

// EnqueueOptions are the per-call settings of EnqueueWith.
type EnqueueOptions struct {
	// Durability overrides the client's WithDurability for this call (unset: the client's).
	Durability edgeqv1.Durability
}

// Enqueue adds 1..1000 jobs atomically. A job without an IdempotencyKey is sent with one
// the client generates (AutoIdempotencyKey; the caller's JobSpec is not modified), so a
// resend cannot store it twice; the results name every key. Such a job is never reported
// Duplicate by that key: a duplicate of a generated key can only be this call's own earlier
// attempt. A job whose UniqueKey an active job holds comes back as that job, with Duplicate
// and Unique true.
//
// Jobs accepted at the edge (DURABILITY_EDGE, or a replica's partition outbox) come back
// with AcceptedAtEdge and Buffered both true, AcceptedBy naming the node whose edge log
// holds them, and Txid 0; until they reach the primary that node's Get shows them as
// JOB_STATE_ACCEPTED. A node whose edge log is full answers RESOURCE_EXHAUSTED with reason
// ReasonEdgeLogFull: nothing was stored, send again after RetryDelay(err).
func (c *Client) Enqueue(ctx context.Context, jobs ...*edgeqv1.JobSpec) (*edgeqv1.EnqueueResponse, error) {
	return c.EnqueueWith(ctx, EnqueueOptions{}, jobs...)
}

// EnqueueWith is Enqueue with per-call options.
func (c *Client) EnqueueWith(ctx context.Context, opts EnqueueOptions, jobs ...*edgeqv1.JobSpec) (*edgeqv1.EnqueueResponse, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	req := &edgeqv1.EnqueueRequest{Jobs: make([]*edgeqv1.JobSpec, len(jobs)), Durability: c.durability}
	if opts.Durability != edgeqv1.Durability_DURABILITY_UNSPECIFIED {
		req.Durability = opts.Durability
	}
	auto := make(map[int]bool)
	for i, job := range jobs {
		if job.GetIdempotencyKey() == "" {
			if job == nil {
				job = &edgeqv1.JobSpec{}
			} else {
				job = proto.Clone(job).(*edgeqv1.JobSpec)
			}
			job.IdempotencyKey = AutoIdempotencyKey()
			auto[i] = true
		}
		req.Jobs[i] = withTrace(ctx, job)
	}
	resp, err := retryWrite(ctx, func(ctx context.Context) (*edgeqv1.EnqueueResponse, error) {
		return c.raw.Enqueue(ctx, req)
	})
	if err != nil {
		var cnr *CommittedNotReplicatedError
		if errors.As(err, &cnr) {
			for _, job := range req.Jobs {
				cnr.IdempotencyKeys = append(cnr.IdempotencyKeys, job.GetIdempotencyKey())
			}
		}
		return nil, err
	}
	for i, r := range resp.GetResults() {
		if r.GetIdempotencyKey() == "" && i < len(req.Jobs) {
			r.IdempotencyKey = req.Jobs[i].GetIdempotencyKey()
		}
		if auto[i] && !r.GetUnique() {
			r.Duplicate = false
		}
	}
	// One flag, two fields: a server older than accepted_at_edge sets only buffered.
	if resp.GetBuffered() || resp.GetAcceptedAtEdge() {
		resp.Buffered, resp.AcceptedAtEdge = true, true
	}
	return resp, nil
}

// Get reads one job (codes.NotFound if absent); minTxid > 0 waits for read-your-writes.
func (c *Client) Get(ctx context.Context, jobID string, minTxid uint64) (*edgeqv1.Job, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	resp, err := c.raw.GetJob(ctx, &edgeqv1.GetJobRequest{JobId: jobID, MinTxid: minTxid})
	if err != nil {
		return nil, err
	}
	return resp.GetJob(), nil
}

// List reads one page of jobs.
func (c *Client) List(ctx context.Context, req *edgeqv1.ListJobsRequest) (*edgeqv1.ListJobsResponse, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	return c.raw.ListJobs(ctx, req)
}

// Stats counts jobs by state per queue (all known queues when none are named).
func (c *Client) Stats(ctx context.Context, queues ...string) ([]*edgeqv1.QueueStats, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	resp, err := c.raw.GetQueueStats(ctx, &edgeqv1.GetQueueStatsRequest{Queues: queues})
	if err != nil {
		return nil, err
	}
	return resp.GetStats(), nil
}

// Cancel cancels a PENDING or RUNNING job. Like every write (Retry, Pause, Resume, Ack,
// Nack, Heartbeat), it is resent unchanged while the server answers COMMITTED_NOT_REPLICATED.
func (c *Client) Cancel(ctx context.Context, jobID string) (*edgeqv1.CancelJobResponse, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	req := &edgeqv1.CancelJobRequest{JobId: jobID}
	return retryWrite(ctx, func(ctx context.Context) (*edgeqv1.CancelJobResponse, error) { return c.raw.CancelJob(ctx, req) })
}

// Retry moves a FAILED or CANCELLED job back to PENDING.
func (c *Client) Retry(ctx context.Context, jobID string) (*edgeqv1.RetryJobResponse, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	req := &edgeqv1.RetryJobRequest{JobId: jobID}
	return retryWrite(ctx, func(ctx context.Context) (*edgeqv1.RetryJobResponse, error) { return c.raw.RetryJob(ctx, req) })
}

// RetryJobs redrives every job sel picks — FAILED by default, or CANCELLED; optionally only
// those created in [CreatedAfter, CreatedBefore) — in RetryJobs calls of at most batch jobs
// each (0: the server's 1000), until none is left. It returns how many it moved back to
// PENDING (the count so far with an error).
func (c *Client) RetryJobs(ctx context.Context, sel *edgeqv1.JobSelection, batch int32) (int64, error) {
	req := &edgeqv1.RetryJobsRequest{Selection: sel, Limit: batch}
	return bulk(ctx, c, func(ctx context.Context) (*edgeqv1.RetryJobsResponse, error) { return c.raw.RetryJobs(ctx, req) })
}

// CancelJobs cancels every job sel picks — PENDING by default, or RUNNING — as RetryJobs
// does, in bounded CancelJobs calls. It returns how many it cancelled.
func (c *Client) CancelJobs(ctx context.Context, sel *edgeqv1.JobSelection, batch int32) (int64, error) {
	req := &edgeqv1.CancelJobsRequest{Selection: sel, Limit: batch}
	return bulk(ctx, c, func(ctx context.Context) (*edgeqv1.CancelJobsResponse, error) { return c.raw.CancelJobs(ctx, req) })
}

// bulkResponse is what RetryJobs and CancelJobs answer.
type bulkResponse interface {
	GetCount() int64
	GetMore() bool
}

func bulk[R bulkResponse](ctx context.Context, c *Client, call func(context.Context) (R, error)) (int64, error) {
	var total int64
	for {
		callCtx, cancel := c.unary(ctx)
		resp, err := retryWrite(callCtx, call)
		cancel()
		if err != nil {
			return total, err
		}
		total += resp.GetCount()
		if !resp.GetMore() {
			return total, nil
		}
	}
}

// SetRateLimit leases at most jobs of queue per period (a token bucket on the primary,
// shared by every worker; leases wait, nothing is refused); jobs = 0 removes the limit.
func (c *Client) SetRateLimit(ctx context.Context, queue string, jobs int64, period time.Duration) error {
	return c.setRateLimit(ctx, queue, "", jobs, period)
}

// SetKeyRateLimit sets queue's per-key rate limit: each distinct value of the job header
// keyHeader gets its own bucket of at most jobs leases per period (jobs without the header
// are not limited by it); jobs = 0 removes it. A queue has at most one queue-wide limit
// (SetRateLimit) and one per-key limit; both apply.
func (c *Client) SetKeyRateLimit(ctx context.Context, queue, keyHeader string, jobs int64, period time.Duration) error {
	return c.setRateLimit(ctx, queue, keyHeader, jobs, period)
}

func (c *Client) setRateLimit(ctx context.Context, queue, keyHeader string, jobs int64, period time.Duration) error {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	req := &edgeqv1.SetRateLimitRequest{Queue: queue, Jobs: jobs, KeyHeader: keyHeader}
	if jobs > 0 {
		req.Period = dpb.New(period)
	}
	_, err := retryWrite(ctx, func(ctx context.Context) (*edgeqv1.SetRateLimitResponse, error) { return c.raw.SetRateLimit(ctx, req) })
	return err
}

// SetGroupWeight gives group (JobSpec.Group; "" is the default group) of queue a share of
// its leases of weight (1..1000; default 1) relative to the queue's other groups while it
// has ready jobs.
func (c *Client) SetGroupWeight(ctx context.Context, queue, group string, weight int32) error {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	req := &edgeqv1.SetGroupWeightRequest{Queue: queue, Group: group, Weight: weight}
	_, err := retryWrite(ctx, func(ctx context.Context) (*edgeqv1.SetGroupWeightResponse, error) {
		return c.raw.SetGroupWeight(ctx, req)
	})
	return err
}

// ListGroups lists every fair group of queue, by name, with its weight and its ready
// (Pending) and Running jobs, reading all pages.
func (c *Client) ListGroups(ctx context.Context, queue string) ([]*edgeqv1.Group, error) {
	var groups []*edgeqv1.Group
	req := &edgeqv1.ListGroupsRequest{Queue: queue}
	for {
		callCtx, cancel := c.unary(ctx)
		resp, err := c.raw.ListGroups(callCtx, req)
		cancel()
		if err != nil {
			return groups, err
		}
		groups = append(groups, resp.GetGroups()...)
		if resp.GetNextPageToken() == "" {
			return groups, nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// UpsertSchedule creates or replaces the cron schedule s.Name (its output fields are
// ignored) and returns it with its next tick.
func (c *Client) UpsertSchedule(ctx context.Context, s *edgeqv1.Schedule) (*edgeqv1.Schedule, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	req := &edgeqv1.UpsertScheduleRequest{Schedule: s}
	resp, err := retryWrite(ctx, func(ctx context.Context) (*edgeqv1.UpsertScheduleResponse, error) {
		return c.raw.UpsertSchedule(ctx, req)
	})
	return resp.GetSchedule(), err
}

// ListSchedules lists every schedule, by name.
func (c *Client) ListSchedules(ctx context.Context) ([]*edgeqv1.Schedule, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	resp, err := c.raw.ListSchedules(ctx, &edgeqv1.ListSchedulesRequest{})
	return resp.GetSchedules(), err
}

// DeleteSchedule removes a schedule; false if there was none.
func (c *Client) DeleteSchedule(ctx context.Context, name string) (bool, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	req := &edgeqv1.DeleteScheduleRequest{Name: name}
	resp, err := retryWrite(ctx, func(ctx context.Context) (*edgeqv1.DeleteScheduleResponse, error) {
		return c.raw.DeleteSchedule(ctx, req)
	})
	return resp.GetDeleted(), err
}

// PauseSchedule stops a schedule's ticks; ResumeSchedule restarts them from the next tick.
func (c *Client) PauseSchedule(ctx context.Context, name string) (*edgeqv1.Schedule, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	req := &edgeqv1.PauseScheduleRequest{Name: name}
	resp, err := retryWrite(ctx, func(ctx context.Context) (*edgeqv1.PauseScheduleResponse, error) {
		return c.raw.PauseSchedule(ctx, req)
	})
	return resp.GetSchedule(), err
}

// ResumeSchedule restarts a paused schedule from the next tick after now.
func (c *Client) ResumeSchedule(ctx context.Context, name string) (*edgeqv1.Schedule, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	req := &edgeqv1.ResumeScheduleRequest{Name: name}
	resp, err := retryWrite(ctx, func(ctx context.Context) (*edgeqv1.ResumeScheduleResponse, error) {
		return c.raw.ResumeSchedule(ctx, req)
	})
	return resp.GetSchedule(), err
}

// Pause stops delivery from a queue.
func (c *Client) Pause(ctx context.Context, queue string) error {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	req := &edgeqv1.PauseQueueRequest{Queue: queue}
	_, err := retryWrite(ctx, func(ctx context.Context) (*edgeqv1.PauseQueueResponse, error) { return c.raw.PauseQueue(ctx, req) })
	return err
}

// Resume restarts delivery from a paused queue.
func (c *Client) Resume(ctx context.Context, queue string) error {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	req := &edgeqv1.ResumeQueueRequest{Queue: queue}
	_, err := retryWrite(ctx, func(ctx context.Context) (*edgeqv1.ResumeQueueResponse, error) { return c.raw.ResumeQueue(ctx, req) })
	return err
}

// Ack completes leased jobs; one outcome per item.
func (c *Client) Ack(ctx context.Context, items ...*edgeqv1.AckItem) (*edgeqv1.AckResponse, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	req := &edgeqv1.AckRequest{Items: items}
	return retryWrite(ctx, func(ctx context.Context) (*edgeqv1.AckResponse, error) { return c.raw.Ack(ctx, req) })
}

// Nack fails leased jobs (retried or FAILED); one outcome per item.
func (c *Client) Nack(ctx context.Context, items ...*edgeqv1.NackItem) (*edgeqv1.NackResponse, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	req := &edgeqv1.NackRequest{Items: items}
	return retryWrite(ctx, func(ctx context.Context) (*edgeqv1.NackResponse, error) { return c.raw.Nack(ctx, req) })
}

// Heartbeat extends live leases to now + extendBy.
func (c *Client) Heartbeat(ctx context.Context, extendBy time.Duration, tokens ...string) (*edgeqv1.HeartbeatResponse, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	req := &edgeqv1.HeartbeatRequest{LeaseTokens: tokens, ExtendBy: dpb.New(extendBy)}
	return retryWrite(ctx, func(ctx context.Context) (*edgeqv1.HeartbeatResponse, error) { return c.raw.Heartbeat(ctx, req) })
}

// HeartbeatWithProgress is Heartbeat that also reports progress for some of the tokens'
// jobs (each Progress names one of tokens).
func (c *Client) HeartbeatWithProgress(ctx context.Context, extendBy time.Duration, tokens []string, progress []*edgeqv1.Progress) (*edgeqv1.HeartbeatResponse, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	req := &edgeqv1.HeartbeatRequest{LeaseTokens: tokens, ExtendBy: dpb.New(extendBy), Progress: progress}
	return retryWrite(ctx, func(ctx context.Context) (*edgeqv1.HeartbeatResponse, error) { return c.raw.Heartbeat(ctx, req) })
}

// NodeInfo describes the answering node (role, primary, txid, replicas, default
// durability, edge log: EdgeLogJobs, EdgeLogOldestAge, EdgeLogDrainRate, EdgeLogBytes,
// EdgeLogCapacityBytes).
func (c *Client) NodeInfo(ctx context.Context) (*edgeqv1.GetNodeInfoResponse, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	return c.raw.GetNodeInfo(ctx, &edgeqv1.GetNodeInfoRequest{})
}
