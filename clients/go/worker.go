package edgeq

// The Worker: one Lease stream with credits, at most Concurrency handlers, a heartbeat
// per running job at half the lease, and one settler goroutine that batches acks and nacks.
// A settle call that fails transiently is resent unchanged (same lease tokens; the server
// answers a repeated Ack/Nack with its first outcome) until the leases would have expired;
// STALE or INVALID outcomes and settles given up on are logged once per job.

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	edgeqv1 "github.com/edgeq/edgeq/clients/go/edgeq/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	dpb "google.golang.org/protobuf/types/known/durationpb"
)

// Handler processes one job. Return nil to ack, a *RetryError to nack with a delay, a
// *FailError to fail it for good, any other error to nack with the server's backoff.
type Handler func(ctx context.Context, job *edgeqv1.Job) error

// RetryError asks for another attempt after After (0: immediately).
type RetryError struct {
	After time.Duration
	Err   error
}

func (e *RetryError) Error() string { return "retry: " + errString(e.Err) }
func (e *RetryError) Unwrap() error { return e.Err }

// FailError fails the job without further attempts (dead-letter state).
type FailError struct{ Err error }

func (e *FailError) Error() string { return "fail: " + errString(e.Err) }
func (e *FailError) Unwrap() error { return e.Err }

func errString(err error) string {
	if err == nil {
		return "(no error)"
	}
	return err.Error()
}

// WorkerOptions tunes a Worker; zero values take the defaults in brackets.
type WorkerOptions struct {
	Concurrency   int           // handlers running at once [8]
	MaxInFlight   int           // unsettled leases the server may push [Concurrency]
	LeaseDuration time.Duration // lease per job, extended by heartbeats at half of it [30s]
	WorkerID      string        // shown on running jobs
	DrainTimeout  time.Duration // on shutdown, how long running handlers may finish [30s]
	MinBackoff    time.Duration // reconnect backoff, full jitter [100ms]
	MaxBackoff    time.Duration // [5s]; also bounds the pause between settle resends
	Logger        *slog.Logger  // settle failures and refused settles [slog.Default()]
}

// Worker holds one Lease stream and runs Handler on the jobs the server pushes.
type Worker struct {
	client  *Client
	queues  []string
	handler Handler
	opts    WorkerOptions
	settles chan settle
}

type settle struct {
	ack   *edgeqv1.AckItem
	nack  *edgeqv1.NackItem
	jobID string // for the log
}

// transientSettle are the settle errors worth resending (the server restarting, draining,
// failing over, or a write committed but not yet confirmed by replicas).
var transientSettle = map[codes.Code]bool{
	codes.Unavailable: true, codes.DeadlineExceeded: true, codes.Internal: true,
	codes.Unknown: true, codes.Aborted: true,
}

// NewWorker builds a worker for queues.
func NewWorker(client *Client, queues []string, handler Handler, opts WorkerOptions) *Worker {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 8
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = opts.Concurrency
	}
	if opts.LeaseDuration <= 0 {
		opts.LeaseDuration = 30 * time.Second
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 30 * time.Second
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Worker{client: client, queues: queues, handler: handler, opts: opts, settles: make(chan settle, 1024)}
}

// Run processes jobs until ctx is cancelled, reconnecting with exponential backoff and full
// jitter whenever the stream ends (server drain, primary change, network). On cancel it
// stops taking jobs, lets running handlers finish for up to DrainTimeout (their context is
// cancelled after that), settles what finished, and returns ctx's error.
func (w *Worker) Run(ctx context.Context) error {
	handlerCtx, stopHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHandlers()
	settlerDone := make(chan struct{})
	go w.settler(settlerDone)
	var running sync.WaitGroup
	sem := make(chan struct{}, w.opts.Concurrency)
	attempt := 0
	for ctx.Err() == nil {
		got, err := w.stream(ctx, handlerCtx, sem, &running)
		if got {
			attempt = 0
		}
		if ctx.Err() != nil {
			break
		}
		_ = err // the stream ended: reconnect after a jittered backoff
		attempt++
		backoff := w.opts.MinBackoff << min(attempt, 16)
		if backoff > w.opts.MaxBackoff || backoff <= 0 {
			backoff = w.opts.MaxBackoff
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(rand.Int64N(int64(backoff)) + 1)):
		}
	}
	done := make(chan struct{})
	go func() { running.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(w.opts.DrainTimeout):
		stopHandlers() // then wait for handlers to honour their cancelled context
		<-done
	}
	close(w.settles)
	<-settlerDone
	return ctx.Err()
}

// stream runs one Lease stream; true if it delivered anything.
func (w *Worker) stream(ctx, handlerCtx context.Context, sem chan struct{}, running *sync.WaitGroup) (bool, error) {
	streamCtx, cancel := context.WithCancel(w.client.withToken(ctx))
	defer cancel()
	stream, err := w.client.raw.Lease(streamCtx, &edgeqv1.LeaseRequest{
		Queues: w.queues, WorkerId: w.opts.WorkerID, MaxInFlight: int32(w.opts.MaxInFlight),
		LeaseDuration: dpb.New(w.opts.LeaseDuration),
	})
	if err != nil {
		return false, err
	}
	got := false
	for {
		msg, err := stream.Recv()
		if err != nil {
			return got, err
		}
		for _, leased := range msg.GetJobs() {
			got = true
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				// Not started: hand it straight back for another worker.
				w.settles <- settle{jobID: leased.GetJob().GetId(), nack: &edgeqv1.NackItem{LeaseToken: leased.GetLeaseToken(), ErrorMessage: "worker stopping", RetryDelay: dpb.New(time.Microsecond)}}
				continue
			}
			running.Add(1)
			go func(leased *edgeqv1.LeasedJob) {
				defer func() { <-sem; running.Done() }()
				w.run(handlerCtx, leased)
			}(leased)
		}
	}
}

// run calls the handler, heartbeating at half the lease while it runs, then settles.
func (w *Worker) run(ctx context.Context, leased *edgeqv1.LeasedJob) {
	beat := make(chan struct{})
	go func() {
		t := time.NewTicker(w.opts.LeaseDuration / 2)
		defer t.Stop()
		for {
			select {
			case <-beat:
				return
			case <-t.C:
				_, _ = w.client.Heartbeat(context.Background(), w.opts.LeaseDuration, leased.GetLeaseToken())
			}
		}
	}()
	err := w.safeHandle(ctx, leased.GetJob())
	close(beat)
	token, id := leased.GetLeaseToken(), leased.GetJob().GetId()
	var retry *RetryError
	var fail *FailError
	switch {
	case err == nil:
		w.settles <- settle{jobID: id, ack: &edgeqv1.AckItem{LeaseToken: token}}
	case errors.As(err, &fail):
		w.settles <- settle{jobID: id, nack: &edgeqv1.NackItem{LeaseToken: token, ErrorMessage: err.Error(), Terminal: true}}
	case errors.As(err, &retry):
		delay := max(retry.After, time.Microsecond) // 0 would mean "server backoff"
		w.settles <- settle{jobID: id, nack: &edgeqv1.NackItem{LeaseToken: token, ErrorMessage: err.Error(), RetryDelay: dpb.New(delay)}}
	default:
		w.settles <- settle{jobID: id, nack: &edgeqv1.NackItem{LeaseToken: token, ErrorMessage: err.Error()}}
	}
}

func (w *Worker) safeHandle(ctx context.Context, job *edgeqv1.Job) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = errors.New("handler panicked")
		}
	}()
	return w.handler(ctx, job)
}

// settler batches acks and nacks: one call per kind every 5 ms or 256 items.
func (w *Worker) settler(done chan struct{}) {
	defer close(done)
	var acks, nacks []settle
	flush := func() {
		if len(acks) > 0 {
			items := make([]*edgeqv1.AckItem, len(acks))
			for i, s := range acks {
				items[i] = s.ack
			}
			w.send("ack", acks, func(ctx context.Context) ([]edgeqv1.LeaseOutcome, error) {
				resp, err := w.client.Ack(ctx, items...)
				return resp.GetOutcomes(), err
			})
			acks = nil
		}
		if len(nacks) > 0 {
			items := make([]*edgeqv1.NackItem, len(nacks))
			for i, s := range nacks {
				items[i] = s.nack
			}
			w.send("nack", nacks, func(ctx context.Context) ([]edgeqv1.LeaseOutcome, error) {
				resp, err := w.client.Nack(ctx, items...)
				return resp.GetOutcomes(), err
			})
			nacks = nil
		}
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case s, ok := <-w.settles:
			if !ok {
				flush()
				return
			}
			if s.ack != nil {
				acks = append(acks, s)
			} else {
				nacks = append(nacks, s)
			}
			if len(acks)+len(nacks) >= 256 {
				flush()
			}
		case <-tick.C:
			flush()
		}
	}
}

// send makes one settle call; a transient failure resends the very same items (call must
// send the same request each time) with backoff until the leases would have expired.
// Outcomes other than OK, and a call given up on, are logged once per job.
func (w *Worker) send(what string, batch []settle, call func(context.Context) ([]edgeqv1.LeaseOutcome, error)) {
	log := w.opts.Logger
	giveUp := time.Now().Add(w.opts.LeaseDuration)
	backoff := w.opts.MinBackoff
	for {
		outcomes, err := call(context.Background())
		if err == nil {
			for i, outcome := range outcomes {
				if outcome != edgeqv1.LeaseOutcome_LEASE_OUTCOME_OK && i < len(batch) {
					log.Warn("edgeq: "+what+" refused: the lease expired, was re-leased or the job cancelled; nothing changed",
						"job", batch[i].jobID, "outcome", outcome.String())
				}
			}
			return
		}
		if !transientSettle[status.Code(err)] || time.Now().Add(backoff).After(giveUp) {
			ids := make([]string, len(batch))
			for i, s := range batch {
				ids[i] = s.jobID
			}
			log.Error("edgeq: "+what+" failed; the leases will expire and the jobs be redelivered",
				"jobs", ids, "err", err)
			return
		}
		log.Warn("edgeq: "+what+" failed; resending", "jobs", len(batch), "err", err, "in", backoff)
		time.Sleep(backoff)
		backoff = min(backoff*2, w.opts.MaxBackoff)
	}
}
