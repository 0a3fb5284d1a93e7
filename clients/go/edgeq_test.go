package edgeq

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	edgeqv1 "github.com/edgeq/edgeq/clients/go/edgeq/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// startServer runs a real edgeq server (the Python one) on port 0 with a fresh database.
func startServer(t *testing.T) string {
	t.Helper()
	addr, _ := startServerOn(t, "0", filepath.Join(t.TempDir(), "e.db"))
	return addr
}

// startServerOn runs the server on port with the database file db; stopped at cleanup.
func startServerOn(t *testing.T, port, db string, extra ...string) (string, *exec.Cmd) {
	t.Helper()
	python := os.Getenv("EDGEQ_PYTHON")
	if python == "" {
		python, _ = filepath.Abs("../../.venv/bin/python")
	}
	args := append([]string{"-m", "edgeq_server", "serve", "--port", port,
		"--db-path", db, "--log-level", "WARNING", "--drain-seconds", "1", "--grace-seconds", "1"}, extra...)
	cmd := exec.Command(python, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", python, err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			if strings.HasPrefix(s.Text(), "edgeq listening on ") {
				lines <- strings.TrimPrefix(s.Text(), "edgeq listening on ")
			}
		}
	}()
	select {
	case addr := <-lines:
		return addr, cmd
	case <-time.After(30 * time.Second):
		t.Fatal("server did not start")
		return "", nil
	}
}

func dial(t *testing.T, opts ...Option) *Client {
	c, err := Dial(startServer(t), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func waitState(t *testing.T, c *Client, id string, want edgeqv1.JobState) *edgeqv1.Job {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		job, err := c.Get(context.Background(), id, 0)
		if err != nil {
			t.Fatal(err)
		}
		if job.GetState() == want {
			return job
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s is %v, wanted %v", id, job.GetState(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestClientRoundTripAndErrors(t *testing.T) {
	c := dial(t)
	ctx := context.Background()
	resp, err := c.Enqueue(ctx, &edgeqv1.JobSpec{Queue: "mail", Payload: []byte("hi"), IdempotencyKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetResults()[0].GetJobId()
	job, err := c.Get(ctx, id, resp.GetTxid())
	if err != nil || string(job.GetPayload()) != "hi" || job.GetState() != edgeqv1.JobState_JOB_STATE_PENDING {
		t.Fatalf("get: %v %v", job, err)
	}
	again, err := c.Enqueue(ctx, &edgeqv1.JobSpec{Queue: "mail", Payload: []byte("hi"), IdempotencyKey: "k"})
	if err != nil || !again.GetResults()[0].GetDuplicate() || again.GetResults()[0].GetJobId() != id {
		t.Fatalf("idempotent enqueue: %v %v", again, err)
	}
	stats, err := c.Stats(ctx, "mail")
	if err != nil || stats[0].GetPending() != 1 {
		t.Fatalf("stats: %v %v", stats, err)
	}
	page, err := c.List(ctx, &edgeqv1.ListJobsRequest{Queue: "mail"})
	if err != nil || len(page.GetJobs()) != 1 {
		t.Fatalf("list: %v %v", page, err)
	}
	info, err := c.NodeInfo(ctx)
	if err != nil || info.GetRole() != edgeqv1.NodeRole_NODE_ROLE_STANDALONE {
		t.Fatalf("node info: %v %v", info, err)
	}
	_, err = c.Enqueue(ctx, &edgeqv1.JobSpec{Queue: "", Payload: []byte("x")})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "jobs[0].queue") {
		t.Fatalf("want INVALID_ARGUMENT naming jobs[0].queue, got %v", err)
	}
	if Reason(err) != "INVALID_FIELD" || Field(err) != "jobs[0].queue" {
		t.Fatalf("want reason INVALID_FIELD and field jobs[0].queue, got %q %q", Reason(err), Field(err))
	}
	if _, err := c.Get(ctx, "0190a0a0-0000-7000-8000-000000000000", 0); status.Code(err) != codes.NotFound {
		t.Fatalf("want NOT_FOUND, got %v", err)
	}
}

func TestDurabilityOnAStandaloneServer(t *testing.T) {
	// A standalone server takes edge as local (no primary to be away from) and refuses
	// replicated: the client's default and the per-call override both reach it.
	c := dial(t, WithDurability(edgeqv1.Durability_DURABILITY_EDGE))
	ctx := context.Background()
	resp, err := c.Enqueue(ctx, &edgeqv1.JobSpec{Queue: "d", Payload: []byte("x")})
	if err != nil || resp.GetAcceptedAtEdge() || resp.GetBuffered() || resp.GetTxid() == 0 {
		t.Fatalf("edge on standalone: %v %v", resp, err)
	}
	_, err = c.EnqueueWith(ctx, EnqueueOptions{Durability: edgeqv1.Durability_DURABILITY_REPLICATED}, &edgeqv1.JobSpec{Queue: "d"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("want FAILED_PRECONDITION for replicated, got %v", err)
	}
	stats, err := c.Stats(ctx, "d")
	if err != nil || stats[0].GetPending() != 1 || stats[0].GetAccepted() != 0 {
		t.Fatalf("stats: %v %v", stats, err)
	}
	info, err := c.NodeInfo(ctx)
	if err != nil || info.GetDurability() != "local" || info.GetEdgeLogJobs() != 0 {
		t.Fatalf("node info: %v %v", info, err)
	}
}

func TestWorkerAcksRetriesAndFails(t *testing.T) {
	c := dial(t)
	ctx, cancel := context.WithCancel(context.Background())
	var ids []string
	for i := 0; i < 20; i++ {
		r, err := c.Enqueue(ctx, &edgeqv1.JobSpec{Queue: "q", Payload: []byte("ok")})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.GetResults()[0].GetJobId())
	}
	bad, err := c.Enqueue(ctx, &edgeqv1.JobSpec{Queue: "q", Payload: []byte("bad"), MaxAttempts: 2})
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	w := NewWorker(c, []string{"q"}, func(_ context.Context, job *edgeqv1.Job) error {
		calls.Add(1)
		if string(job.GetPayload()) == "bad" {
			return &RetryError{After: time.Millisecond, Err: errors.New("boom")}
		}
		return nil
	}, WorkerOptions{Concurrency: 4})
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	for _, id := range ids {
		waitState(t, c, id, edgeqv1.JobState_JOB_STATE_COMPLETED)
	}
	failed := waitState(t, c, bad.GetResults()[0].GetJobId(), edgeqv1.JobState_JOB_STATE_FAILED)
	if failed.GetAttempts() != 2 || !strings.Contains(failed.GetErrorMessage(), "boom") {
		t.Fatalf("failed job: %v", failed)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
	if calls.Load() != 22 {
		t.Fatalf("handler ran %d times, want 22", calls.Load())
	}
}

func TestWorkerHeartbeatsLongJobsAndDrainsOnShutdown(t *testing.T) {
	c := dial(t)
	ctx, cancel := context.WithCancel(context.Background())
	r, err := c.Enqueue(ctx, &edgeqv1.JobSpec{Queue: "slow", Payload: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	w := NewWorker(c, []string{"slow"}, func(context.Context, *edgeqv1.Job) error {
		close(started)
		time.Sleep(3 * time.Second) // longer than the 2 s lease: heartbeats keep it
		return nil
	}, WorkerOptions{Concurrency: 1, LeaseDuration: 2 * time.Second})
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	<-started
	cancel() // shutdown while the job runs: it finishes and is acked
	<-done
	job := waitState(t, c, r.GetResults()[0].GetJobId(), edgeqv1.JobState_JOB_STATE_COMPLETED)
	if job.GetAttempts() != 1 {
		t.Fatalf("attempts %d: the lease expired and the job ran again", job.GetAttempts())
	}
}

func TestWorkerReconnectsWhenTheServerRestarts(t *testing.T) {
	db := filepath.Join(t.TempDir(), "e.db")
	addr, first := startServerOn(t, "0", db)
	c, err := Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan string, 4)
	w := NewWorker(c, []string{"r"}, func(_ context.Context, job *edgeqv1.Job) error {
		got <- string(job.GetPayload())
		return nil
	}, WorkerOptions{Concurrency: 1, MaxBackoff: 300 * time.Millisecond})
	go func() { _ = w.Run(ctx) }()
	if _, err := c.Enqueue(ctx, &edgeqv1.JobSpec{Queue: "r", Payload: []byte("one")}); err != nil {
		t.Fatal(err)
	}
	if p := <-got; p != "one" {
		t.Fatal(p)
	}
	// SIGTERM: the server drains (the Lease stream ends UNAVAILABLE) and exits; a new one
	// starts on the same port and file. The worker reconnects by itself.
	_ = first.Process.Signal(syscall.SIGTERM)
	_ = first.Wait()
	startServerOn(t, addr[strings.LastIndex(addr, ":")+1:], db)
	if _, err := c.Enqueue(ctx, &edgeqv1.JobSpec{Queue: "r", Payload: []byte("two")}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if p != "two" {
			t.Fatal(p)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the worker did not reconnect")
	}
}

func TestBulkRetryAndCancelInBoundedCalls(t *testing.T) {
	c := dial(t)
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		if _, err := c.Enqueue(ctx, &edgeqv1.JobSpec{Queue: "gbulk", Payload: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := c.CancelJobs(ctx, &edgeqv1.JobSelection{Queue: "gbulk"}, 2) // calls of 2, 2, 1
	if err != nil || n != 5 {
		t.Fatalf("CancelJobs = %d, %v; want 5", n, err)
	}
	n, err = c.RetryJobs(ctx, &edgeqv1.JobSelection{Queue: "gbulk", State: edgeqv1.JobState_JOB_STATE_CANCELLED}, 0)
	if err != nil || n != 5 {
		t.Fatalf("RetryJobs = %d, %v; want 5", n, err)
	}
	if _, err := c.RetryJobs(ctx, &edgeqv1.JobSelection{Queue: "gbulk", State: edgeqv1.JobState_JOB_STATE_PENDING}, 0); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("RetryJobs of PENDING jobs: %v; want InvalidArgument", err)
	}
}

func TestUniqueKeyReturnsTheActiveJob(t *testing.T) {
	c := dial(t)
	ctx := context.Background()
	first, err := c.Enqueue(ctx, &edgeqv1.JobSpec{Queue: "guq", Payload: []byte("a"), UniqueKey: "nightly"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Enqueue(ctx, &edgeqv1.JobSpec{Queue: "guq", Payload: []byte("b"), UniqueKey: "nightly",
		Uniqueness: edgeqv1.Uniqueness_UNIQUENESS_PENDING})
	if err != nil {
		t.Fatal(err)
	}
	a, b := first.GetResults()[0], again.GetResults()[0]
	if a.GetDuplicate() || !b.GetDuplicate() || !b.GetUnique() || b.GetJobId() != a.GetJobId() {
		t.Fatalf("second enqueue %+v; want the first job %s, duplicate and unique", b, a.GetJobId())
	}
}

func TestSchedulesAndRateLimits(t *testing.T) {
	c := dial(t)
	ctx := context.Background()
	s, err := c.UpsertSchedule(ctx, &edgeqv1.Schedule{Name: "gs", Queue: "gsq", Cron: "*/5 * * * *", TimeZone: "Europe/Berlin"})
	if err != nil || s.GetNextRunAt() == nil || s.GetTimeZone() != "Europe/Berlin" {
		t.Fatalf("UpsertSchedule = %v, %v", s, err)
	}
	if p, err := c.PauseSchedule(ctx, "gs"); err != nil || !p.GetPaused() {
		t.Fatalf("PauseSchedule = %v, %v", p, err)
	}
	if r, err := c.ResumeSchedule(ctx, "gs"); err != nil || r.GetPaused() {
		t.Fatalf("ResumeSchedule = %v, %v", r, err)
	}
	if all, err := c.ListSchedules(ctx); err != nil || len(all) != 1 || all[0].GetName() != "gs" {
		t.Fatalf("ListSchedules = %v, %v", all, err)
	}
	if ok, err := c.DeleteSchedule(ctx, "gs"); err != nil || !ok {
		t.Fatalf("DeleteSchedule = %v, %v", ok, err)
	}
	if _, err := c.UpsertSchedule(ctx, &edgeqv1.Schedule{Name: "bad", Queue: "q", Cron: "nope"}); Field(err) != "schedule.cron" {
		t.Fatalf("a bad cron: %v (field %q)", err, Field(err))
	}
	if err := c.SetRateLimit(ctx, "grl", 30, time.Minute); err != nil {
		t.Fatal(err)
	}
	stats, err := c.Stats(ctx, "grl")
	if err != nil || stats[0].GetRateLimitJobs() != 30 || stats[0].GetRateLimitPeriod().AsDuration() != time.Minute {
		t.Fatalf("stats after SetRateLimit: %v, %v", stats, err)
	}
}

func TestSetKeyRateLimit(t *testing.T) {
	c := dial(t)
	ctx := context.Background()
	if err := c.SetRateLimit(ctx, "gkrl", 30, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := c.SetKeyRateLimit(ctx, "gkrl", "tenant", 5, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	stats, err := c.Stats(ctx, "gkrl")
	if err != nil || len(stats) != 1 {
		t.Fatalf("Stats = %v, %v", stats, err)
	}
	s := stats[0]
	if s.GetKeyRateLimitHeader() != "tenant" || s.GetKeyRateLimitJobs() != 5 || s.GetKeyRateLimitPeriod().AsDuration() != 2*time.Second {
		t.Fatalf("stats after SetKeyRateLimit: %v", s)
	}
	if s.GetRateLimitJobs() != 30 { // the queue-wide limit stays
		t.Fatalf("queue-wide limit after SetKeyRateLimit: %v", s)
	}
	if err := c.SetKeyRateLimit(ctx, "gkrl", "tenant", 0, 0); err != nil {
		t.Fatal(err)
	}
	stats, err = c.Stats(ctx, "gkrl")
	if err != nil || stats[0].GetKeyRateLimitHeader() != "" || stats[0].GetKeyRateLimitJobs() != 0 || stats[0].GetRateLimitJobs() != 30 {
		t.Fatalf("stats after removing the per-key limit: %v, %v", stats, err)
	}
}

func TestFairGroups(t *testing.T) {
	c := dial(t)
	ctx := context.Background()
	resp, err := c.Enqueue(ctx,
		&edgeqv1.JobSpec{Queue: "gfq", Payload: []byte("a"), Group: "tenant-a"},
		&edgeqv1.JobSpec{Queue: "gfq", Payload: []byte("b"), Group: "tenant-a"},
		&edgeqv1.JobSpec{Queue: "gfq", Payload: []byte("c"), Group: "tenant-b"})
	if err != nil {
		t.Fatal(err)
	}
	if job, err := c.Get(ctx, resp.GetResults()[0].GetJobId(), resp.GetTxid()); err != nil || job.GetGroup() != "tenant-a" {
		t.Fatalf("Get = %v, %v; want group tenant-a", job, err)
	}
	if err := c.SetGroupWeight(ctx, "gfq", "tenant-b", 5); err != nil {
		t.Fatal(err)
	}
	groups, err := c.ListGroups(ctx, "gfq")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][3]int64{}
	for _, g := range groups {
		got[g.GetGroup()] = [3]int64{int64(g.GetWeight()), g.GetPending(), g.GetRunning()}
	}
	if got["tenant-a"] != [3]int64{1, 2, 0} || got["tenant-b"] != [3]int64{5, 1, 0} {
		t.Fatalf("ListGroups = %v", groups)
	}
	if err := c.SetGroupWeight(ctx, "gfq", "tenant-b", 0); Field(err) != "weight" {
		t.Fatalf("weight 0: %v (field %q)", err, Field(err))
	}
	if _, err := c.Enqueue(ctx, &edgeqv1.JobSpec{Queue: "gfq", Group: "bad\x01"}); Field(err) != "jobs[0].group" {
		t.Fatalf("a group with a control character: %v (field %q)", err, Field(err))
	}
}
