package edgeq

// Retried writes against a small real gRPC server (a scripted QueueService) that answers
// the first calls of a method with the server's rich errors: ABORTED + ErrorInfo
// COMMITTED_NOT_REPLICATED, or UNAVAILABLE + ErrorInfo NO_PRIMARY + RetryInfo.

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	edgeqv1 "github.com/edgeq/edgeq/clients/go/edgeq/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	dpb "google.golang.org/protobuf/types/known/durationpb"
)

type scripted struct {
	edgeqv1.UnimplementedQueueServiceServer
	mu       sync.Mutex
	requests map[string][]proto.Message
	failures map[string]int
	errs     map[string]error
	keys     map[string]string
	accepted map[string]bool // job ids enqueued with DURABILITY_EDGE
	lease    []*edgeqv1.LeasedJob
	outcome  edgeqv1.LeaseOutcome
	nextID   int
}

func richErr(t *testing.T, code codes.Code, msg, reason string, md map[string]string, delay time.Duration) error {
	t.Helper()
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain, Metadata: md}}
	if delay > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: dpb.New(delay)})
	}
	st, err := status.New(code, msg).WithDetails(details...)
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

func cnr(t *testing.T, txid string) error {
	return richErr(t, codes.Aborted, "committed, not confirmed by replicas in time", ReasonCommittedNotReplicated,
		map[string]string{"txid": txid}, 0)
}

// record notes req and returns the scripted error for this call, if any.
func (s *scripted) record(method string, req proto.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests[method] = append(s.requests[method], proto.Clone(req))
	if s.failures[method] > 0 {
		s.failures[method]--
		return s.errs[method]
	}
	return nil
}

func (s *scripted) sent(method string) []proto.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]proto.Message(nil), s.requests[method]...)
}

func (s *scripted) Enqueue(_ context.Context, req *edgeqv1.EnqueueRequest) (*edgeqv1.EnqueueResponse, error) {
	s.mu.Lock()
	var results []*edgeqv1.EnqueueResult
	for _, job := range req.GetJobs() {
		key := job.GetQueue() + "/" + job.GetIdempotencyKey()
		id, dup := s.keys[key]
		if !dup || job.GetIdempotencyKey() == "" {
			s.nextID++
			id = "job-" + strings.Repeat("x", s.nextID)
			dup = false
			if job.GetIdempotencyKey() != "" {
				s.keys[key] = id // stored even if this call then fails: it committed
			}
		}
		results = append(results, &edgeqv1.EnqueueResult{JobId: id, Duplicate: dup, IdempotencyKey: job.GetIdempotencyKey()})
	}
	edge := req.GetDurability() == edgeqv1.Durability_DURABILITY_EDGE
	if edge {
		for _, r := range results {
			s.accepted[r.GetJobId()] = true
		}
	}
	s.mu.Unlock()
	if err := s.record("Enqueue", req); err != nil {
		return nil, err
	}
	if edge { // as a node whose edge log holds the jobs (only the new field set: see Enqueue)
		return &edgeqv1.EnqueueResponse{Results: results, AcceptedAtEdge: true, AcceptedBy: "edge-1:7000"}, nil
	}
	return &edgeqv1.EnqueueResponse{Results: results, Txid: 42}, nil
}

func (s *scripted) GetJob(_ context.Context, req *edgeqv1.GetJobRequest) (*edgeqv1.GetJobResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	state := edgeqv1.JobState_JOB_STATE_PENDING
	if s.accepted[req.GetJobId()] {
		state = edgeqv1.JobState_JOB_STATE_ACCEPTED
	}
	return &edgeqv1.GetJobResponse{Job: &edgeqv1.Job{Id: req.GetJobId(), State: state}}, nil
}

func (s *scripted) outcomes(n int) []edgeqv1.LeaseOutcome {
	out := make([]edgeqv1.LeaseOutcome, n)
	for i := range out {
		out[i] = s.outcome
	}
	return out
}

func (s *scripted) Ack(_ context.Context, req *edgeqv1.AckRequest) (*edgeqv1.AckResponse, error) {
	if err := s.record("Ack", req); err != nil {
		return nil, err
	}
	return &edgeqv1.AckResponse{Outcomes: s.outcomes(len(req.GetItems()))}, nil
}

func (s *scripted) Nack(_ context.Context, req *edgeqv1.NackRequest) (*edgeqv1.NackResponse, error) {
	if err := s.record("Nack", req); err != nil {
		return nil, err
	}
	return &edgeqv1.NackResponse{Outcomes: s.outcomes(len(req.GetItems()))}, nil
}

func (s *scripted) Heartbeat(_ context.Context, req *edgeqv1.HeartbeatRequest) (*edgeqv1.HeartbeatResponse, error) {
	if err := s.record("Heartbeat", req); err != nil {
		return nil, err
	}
	return &edgeqv1.HeartbeatResponse{Outcomes: s.outcomes(len(req.GetLeaseTokens()))}, nil
}

func (s *scripted) CancelJob(_ context.Context, req *edgeqv1.CancelJobRequest) (*edgeqv1.CancelJobResponse, error) {
	if err := s.record("CancelJob", req); err != nil {
		return nil, err
	}
	return &edgeqv1.CancelJobResponse{Job: &edgeqv1.Job{Id: req.GetJobId(), State: edgeqv1.JobState_JOB_STATE_CANCELLED}}, nil
}

func (s *scripted) RetryJob(_ context.Context, req *edgeqv1.RetryJobRequest) (*edgeqv1.RetryJobResponse, error) {
	if err := s.record("RetryJob", req); err != nil {
		return nil, err
	}
	return &edgeqv1.RetryJobResponse{Job: &edgeqv1.Job{Id: req.GetJobId(), State: edgeqv1.JobState_JOB_STATE_PENDING}}, nil
}

func (s *scripted) GetQueueStats(_ context.Context, req *edgeqv1.GetQueueStatsRequest) (*edgeqv1.GetQueueStatsResponse, error) {
	if err := s.record("GetQueueStats", req); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return &edgeqv1.GetQueueStatsResponse{Stats: []*edgeqv1.QueueStats{{Queue: "q", Accepted: int64(len(s.accepted))}}}, nil
}

func (s *scripted) Lease(_ *edgeqv1.LeaseRequest, stream grpc.ServerStreamingServer[edgeqv1.LeaseResponse]) error {
	s.mu.Lock()
	jobs := s.lease
	s.lease = nil
	s.mu.Unlock()
	if len(jobs) > 0 {
		if err := stream.Send(&edgeqv1.LeaseResponse{Jobs: jobs}); err != nil {
			return err
		}
	}
	<-stream.Context().Done()
	return nil
}

// startScripted serves a scripted QueueService on a free port; returns it and a Client.
func startScripted(t *testing.T, opts ...Option) (*scripted, *Client) {
	t.Helper()
	s := &scripted{requests: map[string][]proto.Message{}, failures: map[string]int{}, errs: map[string]error{},
		keys: map[string]string{}, accepted: map[string]bool{}, outcome: edgeqv1.LeaseOutcome_LEASE_OUTCOME_OK}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	edgeqv1.RegisterQueueServiceServer(srv, s)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	c, err := Dial(lis.Addr().String(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return s, c
}

func allEqual(t *testing.T, sent []proto.Message, n int) {
	t.Helper()
	if len(sent) != n {
		t.Fatalf("%d requests, want %d", len(sent), n)
	}
	for _, m := range sent[1:] {
		if !proto.Equal(m, sent[0]) {
			t.Fatalf("a resend differs from the first request:\n%v\n%v", sent[0], m)
		}
	}
}

func TestEnqueueResendsTheSameKeysOnCommittedNotReplicated(t *testing.T) {
	s, c := startScripted(t)
	s.failures["Enqueue"], s.errs["Enqueue"] = 2, cnr(t, "42")
	mine := &edgeqv1.JobSpec{Queue: "mail", Payload: []byte("a")}
	resp, err := c.Enqueue(context.Background(), mine,
		&edgeqv1.JobSpec{Queue: "mail", Payload: []byte("b"), IdempotencyKey: "user-key"})
	if err != nil {
		t.Fatal(err)
	}
	if mine.GetIdempotencyKey() != "" {
		t.Fatal("the caller's JobSpec was modified")
	}
	sent := s.sent("Enqueue")
	allEqual(t, sent, 3)
	jobs := sent[0].(*edgeqv1.EnqueueRequest).GetJobs()
	key := jobs[0].GetIdempotencyKey()
	u := strings.TrimPrefix(key, AutoKeyPrefix)
	if !strings.HasPrefix(key, AutoKeyPrefix) || len(u) != 36 || u[14] != '7' || !strings.ContainsRune("89ab", rune(u[19])) {
		t.Fatalf("generated key %q", key)
	}
	if jobs[1].GetIdempotencyKey() != "user-key" {
		t.Fatalf("user key replaced: %q", jobs[1].GetIdempotencyKey())
	}
	r := resp.GetResults()
	if r[0].GetDuplicate() || r[0].GetIdempotencyKey() != key || r[0].GetJobId() != s.keys["mail/"+key] {
		t.Fatalf("auto-keyed result %v", r[0])
	}
	if !r[1].GetDuplicate() { // a caller's key may name an older job: the server's answer stands
		t.Fatalf("user-keyed result %v", r[1])
	}
}

func TestCommittedNotReplicatedPastTheDeadline(t *testing.T) {
	s, c := startScripted(t)
	s.failures["Enqueue"], s.errs["Enqueue"] = 1<<30, cnr(t, "1234")
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Enqueue(ctx, &edgeqv1.JobSpec{Queue: "q", Payload: []byte("x")})
	if time.Since(start) > 2*time.Second {
		t.Fatalf("took %v", time.Since(start))
	}
	var e *CommittedNotReplicatedError
	if !errors.Is(err, ErrCommittedNotReplicated) || !errors.As(err, &e) {
		t.Fatalf("want CommittedNotReplicatedError, got %T %v", err, err)
	}
	if e.Txid != 1234 || e.Reason() != ReasonCommittedNotReplicated || Reason(err) != ReasonCommittedNotReplicated ||
		status.Code(err) != codes.Aborted {
		t.Fatalf("error fields: %+v, reason %q, code %v", e, Reason(err), status.Code(err))
	}
	sent := s.sent("Enqueue")
	if len(sent) < 3 {
		t.Fatalf("only %d attempts", len(sent))
	}
	allEqual(t, sent, len(sent))
	if key := sent[0].(*edgeqv1.EnqueueRequest).GetJobs()[0].GetIdempotencyKey(); len(e.IdempotencyKeys) != 1 || e.IdempotencyKeys[0] != key {
		t.Fatalf("keys %v, sent %q", e.IdempotencyKeys, key)
	}
}

func TestOtherWritesAreResentUnchanged(t *testing.T) {
	calls := map[string]func(*Client) error{
		"Ack": func(c *Client) error {
			_, err := c.Ack(context.Background(), &edgeqv1.AckItem{LeaseToken: "t1"}, &edgeqv1.AckItem{LeaseToken: "t2"})
			return err
		},
		"Nack": func(c *Client) error {
			_, err := c.Nack(context.Background(), &edgeqv1.NackItem{LeaseToken: "t1", ErrorMessage: "boom"})
			return err
		},
		"Heartbeat": func(c *Client) error {
			_, err := c.Heartbeat(context.Background(), 5*time.Second, "t1", "t2")
			return err
		},
		"CancelJob": func(c *Client) error { _, err := c.Cancel(context.Background(), "j"); return err },
		"RetryJob":  func(c *Client) error { _, err := c.Retry(context.Background(), "j"); return err },
	}
	for method, call := range calls {
		t.Run(method, func(t *testing.T) {
			s, c := startScripted(t)
			s.failures[method], s.errs[method] = 2, cnr(t, "7")
			if err := call(c); err != nil {
				t.Fatal(err)
			}
			allEqual(t, s.sent(method), 3)
		})
	}
}

func TestReasonAndRetryDelayOfOtherErrors(t *testing.T) {
	s, c := startScripted(t)
	s.failures["GetQueueStats"] = 1 << 30
	s.errs["GetQueueStats"] = richErr(t, codes.Unavailable, "no primary", "NO_PRIMARY", map[string]string{"node": "n1"}, 250*time.Millisecond)
	_, err := c.Stats(context.Background())
	if status.Code(err) != codes.Unavailable || Reason(err) != "NO_PRIMARY" || ErrorInfo(err).GetMetadata()["node"] != "n1" {
		t.Fatalf("got %v (reason %q)", err, Reason(err))
	}
	if d, ok := RetryDelay(err); !ok || d != 250*time.Millisecond {
		t.Fatalf("retry delay %v %v", d, ok)
	}
	if errors.Is(err, ErrCommittedNotReplicated) {
		t.Fatal("UNAVAILABLE is not CommittedNotReplicated")
	}
	// ABORTED without the reason: an ordinary error, sent once.
	s.failures["Enqueue"], s.errs["Enqueue"] = 1, status.Error(codes.Aborted, "other")
	if _, err := c.Enqueue(context.Background(), &edgeqv1.JobSpec{Queue: "q"}); status.Code(err) != codes.Aborted ||
		errors.Is(err, ErrCommittedNotReplicated) || Reason(err) != "" || len(s.sent("Enqueue")) != 1 {
		t.Fatalf("plain ABORTED: %v, %d calls", err, len(s.sent("Enqueue")))
	}
}

func TestDurabilityIsSentAndEdgeAcceptanceMapsThrough(t *testing.T) {
	ctx := context.Background()
	job := &edgeqv1.JobSpec{Queue: "q", Payload: []byte("x")}
	durabilities := func(s *scripted) (out []edgeqv1.Durability) {
		for _, m := range s.sent("Enqueue") {
			out = append(out, m.(*edgeqv1.EnqueueRequest).GetDurability())
		}
		return out
	}

	s, c := startScripted(t) // no default: the server's
	if _, err := c.Enqueue(ctx, job); err != nil {
		t.Fatal(err)
	}
	if _, err := c.EnqueueWith(ctx, EnqueueOptions{Durability: edgeqv1.Durability_DURABILITY_REPLICATED}, job); err != nil {
		t.Fatal(err)
	}
	if got := durabilities(s); !slices.Equal(got, []edgeqv1.Durability{edgeqv1.Durability_DURABILITY_UNSPECIFIED, edgeqv1.Durability_DURABILITY_REPLICATED}) {
		t.Fatalf("sent %v", got)
	}

	s, c = startScripted(t, WithDurability(edgeqv1.Durability_DURABILITY_EDGE))
	resp, err := c.Enqueue(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetAcceptedAtEdge() || !resp.GetBuffered() || resp.GetAcceptedBy() != "edge-1:7000" || resp.GetTxid() != 0 {
		t.Fatalf("edge response %v", resp)
	}
	id := resp.GetResults()[0].GetJobId()
	if got, err := c.Get(ctx, id, 0); err != nil || got.GetState() != edgeqv1.JobState_JOB_STATE_ACCEPTED {
		t.Fatalf("get %v %v", got, err)
	}
	if stats, err := c.Stats(ctx, "q"); err != nil || stats[0].GetAccepted() != 1 {
		t.Fatalf("stats %v %v", stats, err)
	}
	local, err := c.EnqueueWith(ctx, EnqueueOptions{Durability: edgeqv1.Durability_DURABILITY_LOCAL}, job)
	if err != nil || local.GetAcceptedAtEdge() || local.GetBuffered() || local.GetAcceptedBy() != "" {
		t.Fatalf("local override %v %v", local, err)
	}
	if got := durabilities(s); !slices.Equal(got, []edgeqv1.Durability{edgeqv1.Durability_DURABILITY_EDGE, edgeqv1.Durability_DURABILITY_LOCAL}) {
		t.Fatalf("sent %v", got)
	}
}

func TestEdgeLogFullIsNamedAndNotResent(t *testing.T) {
	s, c := startScripted(t, WithDurability(edgeqv1.Durability_DURABILITY_EDGE))
	s.failures["Enqueue"] = 1 << 30
	s.errs["Enqueue"] = richErr(t, codes.ResourceExhausted, "edge log full", ReasonEdgeLogFull, nil, 2*time.Second)
	_, err := c.Enqueue(context.Background(), &edgeqv1.JobSpec{Queue: "q"})
	if status.Code(err) != codes.ResourceExhausted || Reason(err) != ReasonEdgeLogFull || errors.Is(err, ErrCommittedNotReplicated) {
		t.Fatalf("got %v (reason %q)", err, Reason(err))
	}
	if d, ok := RetryDelay(err); !ok || d != 2*time.Second {
		t.Fatalf("retry delay %v %v", d, ok)
	}
	if n := len(s.sent("Enqueue")); n != 1 {
		t.Fatalf("%d attempts: EDGE_LOG_FULL is the caller's to resend", n)
	}
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestWorkerResendsSettlesWithTheSameTokensAndLogsStaleOnce(t *testing.T) {
	s, c := startScripted(t)
	s.lease = []*edgeqv1.LeasedJob{
		{Job: &edgeqv1.Job{Id: "job-1", Queue: "w"}, LeaseToken: "tok-1"},
	}
	// Twice a failure gRPC does not retry by itself (ABORTED without a reason), then STALE.
	s.failures["Ack"], s.errs["Ack"] = 2, status.Error(codes.Aborted, "try again")
	s.outcome = edgeqv1.LeaseOutcome_LEASE_OUTCOME_STALE
	var logs syncBuffer
	handled := make(chan struct{}, 1)
	w := NewWorker(c, []string{"w"}, func(context.Context, *edgeqv1.Job) error {
		handled <- struct{}{}
		return nil
	}, WorkerOptions{Concurrency: 1, MinBackoff: 10 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	select {
	case <-handled:
	case <-time.After(10 * time.Second):
		t.Fatal("no job handled")
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(s.sent("Ack")) < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	allEqual(t, s.sent("Ack"), 3)
	if got := s.sent("Ack")[0].(*edgeqv1.AckRequest).GetItems()[0].GetLeaseToken(); got != "tok-1" {
		t.Fatalf("token %q", got)
	}
	out := logs.String()
	if n := strings.Count(out, "ack refused"); n != 1 || !strings.Contains(out, "job=job-1") || !strings.Contains(out, "LEASE_OUTCOME_STALE") {
		t.Fatalf("want one refused-ack line naming job-1, got:\n%s", out)
	}
}
