package edgeq

// The Worker's contract rules (docs/worker-contract.md) against the scripted QueueService of
// retries_test.go: what it sends for each handler outcome, batched heartbeats, lost leases,
// handler timeouts and the drain on stop.

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	edgeqv1 "github.com/edgeq/edgeq/clients/go/edgeq/v1"
)

func leased(n int) []*edgeqv1.LeasedJob {
	jobs := make([]*edgeqv1.LeasedJob, n)
	for i := range jobs {
		jobs[i] = &edgeqv1.LeasedJob{Job: &edgeqv1.Job{Id: fmt.Sprintf("job-%d", i+1), Queue: "w"}, LeaseToken: fmt.Sprintf("tok-%d", i+1)}
	}
	return jobs
}

// runWorker runs w until the returned stop is called (which waits for Run to return).
func runWorker(t *testing.T, w *Worker) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("Run did not return")
		}
	}
	t.Cleanup(stop)
	return stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func nackItems(s *scripted) []*edgeqv1.NackItem {
	var items []*edgeqv1.NackItem
	for _, m := range s.sent("Nack") {
		items = append(items, m.(*edgeqv1.NackRequest).GetItems()...)
	}
	return items
}

func ackItems(s *scripted) []*edgeqv1.AckItem {
	var items []*edgeqv1.AckItem
	for _, m := range s.sent("Ack") {
		items = append(items, m.(*edgeqv1.AckRequest).GetItems()...)
	}
	return items
}

func testLogger(buf *syncBuffer) *slog.Logger { return slog.New(slog.NewTextHandler(buf, nil)) }

func TestWorkerDefaultsMaxInFlightToFourPerHandler(t *testing.T) {
	w := NewWorker(nil, nil, nil, WorkerOptions{Concurrency: 3})
	if w.opts.MaxInFlight != 12 {
		t.Fatalf("MaxInFlight %d, want 12", w.opts.MaxInFlight)
	}
	if w := NewWorker(nil, nil, nil, WorkerOptions{}); w.opts.Concurrency != 8 || w.opts.MaxInFlight != 32 || w.opts.HandlerTimeout != 0 {
		t.Fatalf("defaults %+v", w.opts)
	}
}

func TestWorkerSendsEachHandlerOutcome(t *testing.T) {
	s, c := startScripted(t)
	s.lease = leased(5)
	w := NewWorker(c, []string{"w"}, func(ctx context.Context, job *edgeqv1.Job) error {
		switch job.GetId() {
		case "job-1":
			SetResult(ctx, []byte("hello"))
			return nil
		case "job-2":
			return &RetryError{After: 0, Err: fmt.Errorf("rate limited")}
		case "job-3":
			return &FailError{Err: fmt.Errorf("invalid address")}
		case "job-4":
			panic("nil map write 4711")
		}
		return fmt.Errorf("%s", strings.Repeat("é", 9000))
	}, WorkerOptions{Concurrency: 5, Logger: testLogger(&syncBuffer{})})
	stop := runWorker(t, w)
	waitFor(t, "five outcomes", func() bool { return len(ackItems(s))+len(nackItems(s)) == 5 })
	stop()
	acks := ackItems(s)
	if len(acks) != 1 || acks[0].GetLeaseToken() != "tok-1" || string(acks[0].GetResult()) != "hello" {
		t.Fatalf("acks %v", acks)
	}
	nacks := map[string]*edgeqv1.NackItem{}
	for _, n := range nackItems(s) {
		nacks[n.GetLeaseToken()] = n
	}
	if n := nacks["tok-2"]; n.GetErrorMessage() != "rate limited" || n.GetRetryDelay().AsDuration() <= 0 || n.GetTerminal() {
		t.Fatalf("retry: %v", n)
	}
	if n := nacks["tok-3"]; n.GetErrorMessage() != "invalid address" || !n.GetTerminal() {
		t.Fatalf("fail: %v", n)
	}
	if n := nacks["tok-4"]; n.GetErrorMessage() != "panic: nil map write 4711" || n.GetRetryDelay() != nil || n.GetTerminal() {
		t.Fatalf("panic: %v", n)
	}
	if msg := nacks["tok-5"].GetErrorMessage(); len([]rune(msg)) != MaxErrorMessage || !strings.HasSuffix(msg, "...") {
		t.Fatalf("error text not clipped to %d characters: %d", MaxErrorMessage, len([]rune(msg)))
	}
	if len(s.sent("Nack")) > 2 {
		t.Fatalf("%d Nack calls for 4 outcomes at once: not batched", len(s.sent("Nack")))
	}
}

func TestWorkerExtendsEveryHeldLeaseInOneHeartbeatCall(t *testing.T) {
	s, c := startScripted(t)
	s.lease = leased(4)
	release := make(chan struct{})
	w := NewWorker(c, []string{"w"}, func(ctx context.Context, job *edgeqv1.Job) error {
		<-release
		return nil
	}, WorkerOptions{Concurrency: 1, LeaseDuration: 400 * time.Millisecond, Logger: testLogger(&syncBuffer{})})
	stop := runWorker(t, w)
	waitFor(t, "three heartbeat ticks", func() bool { return len(s.sent("Heartbeat")) >= 3 })
	close(release)
	waitFor(t, "four acks", func() bool { return len(ackItems(s)) == 4 })
	stop()
	beats := s.sent("Heartbeat")
	first := beats[0].(*edgeqv1.HeartbeatRequest)
	// One running handler and three waiting for its slot: all four held, one call.
	if len(first.GetLeaseTokens()) != 4 || first.GetExtendBy().AsDuration() != 400*time.Millisecond {
		t.Fatalf("first heartbeat %v: want all 4 held leases extended by the lease", first)
	}
}

func TestWorkerStaleHeartbeatCancelsTheHandlerAndSendsNothing(t *testing.T) {
	s, c := startScripted(t)
	s.lease = leased(1)
	s.outcome = edgeqv1.LeaseOutcome_LEASE_OUTCOME_STALE
	var logs syncBuffer
	cancelled := make(chan struct{})
	w := NewWorker(c, []string{"w"}, func(ctx context.Context, job *edgeqv1.Job) error {
		select {
		case <-ctx.Done():
			close(cancelled)
		case <-time.After(10 * time.Second):
		}
		return nil
	}, WorkerOptions{Concurrency: 1, LeaseDuration: 200 * time.Millisecond, Logger: testLogger(&logs)})
	stop := runWorker(t, w)
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's ctx was not cancelled by a STALE heartbeat")
	}
	time.Sleep(100 * time.Millisecond)
	stop()
	if len(s.sent("Ack"))+len(s.sent("Nack")) != 0 {
		t.Fatalf("an outcome was sent for a lost lease: %v %v", s.sent("Ack"), s.sent("Nack"))
	}
	if n := strings.Count(logs.String(), "job=job-1"); n != 1 || w.Stats().LeasesLost != 1 {
		t.Fatalf("lost lease logged %d times (want 1), counted %d:\n%s", n, w.Stats().LeasesLost, logs.String())
	}
}

func TestWorkerHandlerTimeoutNacksAtOnceAndDropsTheLateResult(t *testing.T) {
	s, c := startScripted(t)
	s.lease = leased(1)
	returned := make(chan struct{})
	w := NewWorker(c, []string{"w"}, func(ctx context.Context, job *edgeqv1.Job) error {
		defer close(returned)
		<-ctx.Done()
		time.Sleep(200 * time.Millisecond) // returns late, "successfully"
		return nil
	}, WorkerOptions{Concurrency: 1, HandlerTimeout: 100 * time.Millisecond, Logger: testLogger(&syncBuffer{})})
	stop := runWorker(t, w)
	waitFor(t, "the timeout's nack", func() bool { return len(nackItems(s)) == 1 })
	<-returned
	time.Sleep(50 * time.Millisecond)
	stop()
	n := nackItems(s)[0]
	if n.GetErrorMessage() != "handler timed out after 100ms" || n.GetRetryDelay() != nil || n.GetTerminal() {
		t.Fatalf("timeout nack %v", n)
	}
	if len(ackItems(s)) != 0 || len(nackItems(s)) != 1 {
		t.Fatalf("the late result was sent: acks %v nacks %v", ackItems(s), nackItems(s))
	}
}

func TestWorkerStopHandsBackWaitingJobsThenRunningOnesAfterTheDrain(t *testing.T) {
	s, c := startScripted(t)
	s.lease = leased(3)
	started := make(chan string, 3)
	w := NewWorker(c, []string{"w"}, func(ctx context.Context, job *edgeqv1.Job) error {
		started <- job.GetId()
		<-ctx.Done()
		return nil
	}, WorkerOptions{Concurrency: 1, DrainTimeout: 100 * time.Millisecond, Logger: testLogger(&syncBuffer{})})
	stop := runWorker(t, w)
	first := <-started
	t0 := time.Now()
	stop()
	if took := time.Since(t0); took > 3*time.Second {
		t.Fatalf("stop took %v with a 100 ms drain", took)
	}
	if len(started) != 0 {
		t.Fatal("a job started after stop")
	}
	nacks := nackItems(s)
	if len(nacks) != 3 || len(ackItems(s)) != 0 {
		t.Fatalf("want 3 hand-backs and no ack, got nacks %v acks %v", nacks, ackItems(s))
	}
	for _, n := range nacks {
		if d := n.GetRetryDelay().AsDuration(); d <= 0 || d > time.Millisecond || n.GetTerminal() {
			t.Fatalf("hand-back %v: want an immediate retry", n)
		}
		want := "worker stopping"
		if "job-"+strings.TrimPrefix(n.GetLeaseToken(), "tok-") == first {
			want = "worker stopped before the job finished"
		}
		if n.GetErrorMessage() != want {
			t.Fatalf("hand-back of %s: %q, want %q", n.GetLeaseToken(), n.GetErrorMessage(), want)
		}
	}
}

func TestWorkerSendsReportedProgressWithTheNextHeartbeat(t *testing.T) {
	c := dial(t)
	ctx := context.Background()
	resp, err := c.Enqueue(ctx, &edgeqv1.JobSpec{Queue: "gprog", Payload: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetResults()[0].GetJobId()
	release := make(chan struct{})
	w := NewWorker(c, []string{"gprog"}, func(ctx context.Context, job *edgeqv1.Job) error {
		ReportProgress(ctx, 42, "half way")
		<-release
		return nil
	}, WorkerOptions{Concurrency: 1, LeaseDuration: 30 * time.Second}) // not due for 15 s: sent for the report
	stop := runWorker(t, w)
	waitFor(t, "the progress on the job", func() bool {
		j, err := c.Get(ctx, id, 0)
		return err == nil && j.GetProgress() == 42 && j.GetProgressMessage() == "half way"
	})
	close(release)
	waitState(t, c, id, edgeqv1.JobState_JOB_STATE_COMPLETED)
	stop()
}
