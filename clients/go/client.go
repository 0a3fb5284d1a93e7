// Package edgeq is the Go client for edgeq: Client wraps every QueueService RPC with a
// deadline, bearer-token metadata and gRPC's service-config retry of UNAVAILABLE; Worker
// (worker.go) holds a Lease stream and runs a handler. The generated stubs are in
// github.com/edgeq/edgeq/clients/go/edgeq/v1 (regenerate with `bash scripts/gen`).
package edgeq

import (
	"context"
	"time"

	edgeqv1 "github.com/edgeq/edgeq/clients/go/edgeq/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	dpb "google.golang.org/protobuf/types/known/durationpb"
)

// DefaultTimeout is the deadline of a unary call whose context has none.
const DefaultTimeout = 10 * time.Second

// retryPolicy retries UNAVAILABLE (no primary, draining, connection lost): the same policy
// as the Python client's channel.
const serviceConfig = `{"methodConfig": [{"name": [{"service": "edgeq.v1.QueueService"}],
  "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "2s",
  "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}`

// Option configures Dial.
type Option func(*Client)

// WithToken sends "authorization: Bearer <token>" on every call.
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

// WithTimeout sets the deadline for unary calls whose context has none.
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

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
	dialOpts []grpc.DialOption
}

// Dial connects lazily to target ("host:port").
func Dial(target string, opts ...Option) (*Client, error) {
	c := &Client{timeout: DefaultTimeout}
	for _, o := range opts {
		o(c)
	}
	dial := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
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

// Enqueue adds 1..1000 jobs atomically.
func (c *Client) Enqueue(ctx context.Context, jobs ...*edgeqv1.JobSpec) (*edgeqv1.EnqueueResponse, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	return c.raw.Enqueue(ctx, &edgeqv1.EnqueueRequest{Jobs: jobs})
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

// Cancel cancels a PENDING or RUNNING job.
func (c *Client) Cancel(ctx context.Context, jobID string) (*edgeqv1.CancelJobResponse, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	return c.raw.CancelJob(ctx, &edgeqv1.CancelJobRequest{JobId: jobID})
}

// Retry moves a FAILED or CANCELLED job back to PENDING.
func (c *Client) Retry(ctx context.Context, jobID string) (*edgeqv1.RetryJobResponse, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	return c.raw.RetryJob(ctx, &edgeqv1.RetryJobRequest{JobId: jobID})
}

// Pause stops delivery from a queue.
func (c *Client) Pause(ctx context.Context, queue string) error {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	_, err := c.raw.PauseQueue(ctx, &edgeqv1.PauseQueueRequest{Queue: queue})
	return err
}

// Resume restarts delivery from a paused queue.
func (c *Client) Resume(ctx context.Context, queue string) error {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	_, err := c.raw.ResumeQueue(ctx, &edgeqv1.ResumeQueueRequest{Queue: queue})
	return err
}

// Ack completes leased jobs; one outcome per item.
func (c *Client) Ack(ctx context.Context, items ...*edgeqv1.AckItem) (*edgeqv1.AckResponse, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	return c.raw.Ack(ctx, &edgeqv1.AckRequest{Items: items})
}

// Nack fails leased jobs (retried or FAILED); one outcome per item.
func (c *Client) Nack(ctx context.Context, items ...*edgeqv1.NackItem) (*edgeqv1.NackResponse, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	return c.raw.Nack(ctx, &edgeqv1.NackRequest{Items: items})
}

// Heartbeat extends live leases to now + extendBy.
func (c *Client) Heartbeat(ctx context.Context, extendBy time.Duration, tokens ...string) (*edgeqv1.HeartbeatResponse, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	return c.raw.Heartbeat(ctx, &edgeqv1.HeartbeatRequest{LeaseTokens: tokens, ExtendBy: dpb.New(extendBy)})
}

// NodeInfo describes the answering node (role, primary, txid, replicas, outbox).
func (c *Client) NodeInfo(ctx context.Context) (*edgeqv1.GetNodeInfoResponse, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	return c.raw.GetNodeInfo(ctx, &edgeqv1.GetNodeInfoRequest{})
}
