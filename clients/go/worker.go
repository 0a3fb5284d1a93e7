package edgeq

// The Worker follows docs/worker-contract.md:
//
//   - §1 one Lease stream opened with MaxInFlight credits (default 4 × Concurrency); jobs
//     beyond Concurrency wait in the worker for a handler slot, their leases held.
//   - §2 one heartbeat goroutine extends every held lease (running, waiting for a slot, or
//     being settled) at half its duration, in one batched Heartbeat call per tick.
//   - §3 handler outcomes: nil → Ack (with SetResult's bytes), *RetryError → Nack with
//     its delay, *FailError → terminal Nack, other errors → Nack (server backoff), a panic →
//     Nack "panic: <value>", past HandlerTimeout → ctx cancelled and Nack "handler timed
//     out after <d>" at once (a later result is dropped). Error texts are clipped to 8,192
//     characters.
//   - §4 one settler goroutine batches acks and nacks (≤ 256 items gathered ≤ 5 ms); a
//     settle call failing transiently is resent unchanged (same lease tokens) with backoff
//     until the leases would have expired; STALE/INVALID outcomes are logged once per job.
//   - §5 a STALE heartbeat outcome cancels the handler's ctx; its outcome is not sent.
//   - §6 cancelling Run's ctx stops the stream, hands back jobs not started (Nack, retry at
//     once), gives running handlers DrainTimeout, then cancels and hands them back too, and
//     flushes every outcome before Run returns.
//   - §7 the stream is reopened after a full-jitter backoff; a stream refused for good
//     stops the worker with that error.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	edgeqv1 "github.com/edgeq/edgeq/clients/go/edgeq/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	dpb "google.golang.org/protobuf/types/known/durationpb"
)

// Handler processes one job. Return nil to ack (SetResult stores a result with it), a
// *RetryError to nack with a delay, a *FailError to fail it for good, any other error to
// nack with the server's backoff. ctx is cancelled when the job's lease is lost (cancelled,
// expired, re-leased), when HandlerTimeout passes, and when a stop's DrainTimeout passes;
// whatever the handler returns after that is not sent.
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

type resultKey struct{}

type resultBox struct {
	mu   sync.Mutex
	data []byte
}

// SetResult, called from a Handler with its ctx, stores result on the job when the handler
// returns nil (the Ack carries it). The last call wins; outside a handler it does nothing.
func SetResult(ctx context.Context, result []byte) {
	if b, ok := ctx.Value(resultKey{}).(*resultBox); ok {
		b.mu.Lock()
		b.data = append([]byte(nil), result...)
		b.mu.Unlock()
	}
}

// ReportProgress, called from a Handler with its ctx, reports how far the handler got (a
// finite number in its own unit and a note of at most 256 bytes): sent with the Worker's
// next heartbeat tick (the last report wins), stored on the job and shown by Get, the CLI
// and the dashboard. Outside a handler it does nothing.
func ReportProgress(ctx context.Context, value float64, message string) {
	if p, ok := ctx.Value(progressKey{}).(*progressBox); ok && !math.IsNaN(value) && !math.IsInf(value, 0) {
		if len(message) > 256 {
			message = message[:256]
		}
		p.mu.Lock()
		p.report = &edgeqv1.Progress{Value: value, Message: message}
		p.mu.Unlock()
	}
}

type progressKey struct{}

// progressBox holds a handler's latest report until a heartbeat takes it.
type progressBox struct {
	mu     sync.Mutex
	report *edgeqv1.Progress
}

func (p *progressBox) take(token string) *edgeqv1.Progress {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.report
	p.report = nil
	if r != nil {
		r.LeaseToken = token
	}
	return r
}

func (p *progressBox) pending() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.report != nil
}

// MaxErrorMessage is the longest error text a Nack carries (longer ones are clipped).
const MaxErrorMessage = 8192

const (
	settleBatch    = 256
	settleGather   = 5 * time.Millisecond
	heartbeatBatch = 1000 // the most tokens one Heartbeat call takes
)

// immediate is the retry delay of a job handed back: 0 would mean "server backoff".
var immediate = dpb.New(time.Microsecond)

// WorkerOptions tunes a Worker; zero values take the defaults in brackets.
type WorkerOptions struct {
	Concurrency    int           // handlers running at once [8]
	MaxInFlight    int           // unsettled leases the server may push [4 × Concurrency]
	LeaseDuration  time.Duration // lease per job (≥ 1 s), extended at half of it [30s]
	HandlerTimeout time.Duration // a handler running longer is cancelled and nacked [none]
	WorkerID       string        // shown on running jobs
	DrainTimeout   time.Duration // on shutdown, how long running handlers may finish [30s]
	MinBackoff     time.Duration // reconnect and settle-resend backoff, doubling [100ms]
	MaxBackoff     time.Duration // [5s]; reconnects use full jitter
	Logger         *slog.Logger  // lost leases, failed settles, panics [slog.Default()]
}

// WorkerStats counts what a Worker did.
type WorkerStats struct {
	Acked, Nacked int64 // settles the server accepted
	Stale         int64 // Acks/Nacks answered STALE or INVALID (lease lost before settling)
	LeasesLost    int64 // leases a heartbeat found lost
	Reconnects    int64 // Lease streams reopened
}

// Worker holds one Lease stream and runs Handler on the jobs the server pushes.
type Worker struct {
	client  *Client
	queues  []string
	handler Handler
	opts    WorkerOptions

	mu       sync.Mutex
	held     map[string]*lease // by lease token: every lease not yet settled nor lost
	active   int               // running handlers whose outcome is not decided yet
	stopping bool
	changed  chan struct{} // poked when active drops

	sq      sync.Mutex
	queue   []settle // outcomes waiting for the settler
	poke    chan struct{}
	closing bool // the settler flushes what is queued and returns

	acked, nacked, stale, lost, reconnects atomic.Int64
}

type leaseState int

const (
	waiting  leaseState = iota // received, waiting for a handler slot
	running                    // its handler runs, outcome not decided
	settling                   // its outcome (or hand-back) is decided and queued/sent
)

type lease struct {
	token, id string
	job       *edgeqv1.Job
	// guarded by Worker.mu
	state    leaseState
	lost     bool
	due      time.Time // next heartbeat
	cancel   context.CancelCauseFunc
	progress progressBox
}

type settle struct {
	l    *lease
	ack  *edgeqv1.AckItem
	nack *edgeqv1.NackItem
}

// transientSettle are the settle errors worth resending (the server restarting, draining,
// failing over, or a write committed but not yet confirmed by replicas).
var transientSettle = map[codes.Code]bool{
	codes.Unavailable: true, codes.DeadlineExceeded: true, codes.Internal: true,
	codes.Unknown: true, codes.Aborted: true,
}

// refusedForGood are the Lease stream errors that stop the worker.
var refusedForGood = map[codes.Code]bool{
	codes.InvalidArgument: true, codes.Unauthenticated: true, codes.PermissionDenied: true,
	codes.Unimplemented: true,
}

var errLeaseLost = errors.New("edgeq: the job's lease was lost (cancelled, expired or re-leased)")

// NewWorker builds a worker for queues.
func NewWorker(client *Client, queues []string, handler Handler, opts WorkerOptions) *Worker {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 8
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = 4 * opts.Concurrency
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
	return &Worker{
		client: client, queues: queues, handler: handler, opts: opts,
		held: make(map[string]*lease), changed: make(chan struct{}, 1), poke: make(chan struct{}, 1),
	}
}

// Stats is a snapshot of the worker's counters.
func (w *Worker) Stats() WorkerStats {
	return WorkerStats{Acked: w.acked.Load(), Nacked: w.nacked.Load(), Stale: w.stale.Load(),
		LeasesLost: w.lost.Load(), Reconnects: w.reconnects.Load()}
}

// Run processes jobs until ctx is cancelled, reconnecting with exponential backoff and full
// jitter whenever the stream ends (server drain, primary change, network). On cancel it
// stops the stream, hands back jobs not started, lets running handlers finish for up to
// DrainTimeout (then cancels their context and hands them back), settles every outcome,
// and returns ctx's error. A stream refused for good (INVALID_ARGUMENT, UNAUTHENTICATED,
// PERMISSION_DENIED, UNIMPLEMENTED) stops the worker the same way and returns that error.
// Run is called once per Worker.
func (w *Worker) Run(ctx context.Context) error {
	handlerCtx, stopHandlers := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stopHandlers(nil)
	settlerDone := make(chan struct{})
	go w.settler(settlerDone)
	hbStop, hbDone := make(chan struct{}), make(chan struct{})
	go w.heartbeater(hbStop, hbDone)
	stopCh := make(chan struct{})
	var handlers sync.WaitGroup
	sem := make(chan struct{}, w.opts.Concurrency)

	var fatal error
	failures := 0
	for ctx.Err() == nil {
		got, err := w.stream(ctx, handlerCtx, sem, stopCh, &handlers)
		if got {
			failures = 0
		}
		if ctx.Err() != nil {
			break
		}
		if refusedForGood[status.Code(err)] {
			w.opts.Logger.Error("edgeq: lease stream refused; stopping the worker", "err", err)
			fatal = err
			break
		}
		ceiling := w.opts.MaxBackoff
		if failures < 32 {
			ceiling = min(ceiling, w.opts.MinBackoff<<failures)
		}
		failures++
		delay := time.Duration(rand.Int64N(int64(max(ceiling, 1)) + 1))
		w.opts.Logger.Warn("edgeq: lease stream ended; reconnecting", "err", err, "in", delay)
		select {
		case <-ctx.Done():
		case <-time.After(delay):
			w.reconnects.Add(1)
		}
	}

	// §6: no more jobs arrive; hand back those not started.
	w.mu.Lock()
	w.stopping = true
	for _, l := range w.held {
		if l.state == waiting && !l.lost {
			w.decide(l, settle{nack: &edgeqv1.NackItem{LeaseToken: l.token, ErrorMessage: "worker stopping", RetryDelay: immediate}})
		}
	}
	w.mu.Unlock()
	close(stopCh)

	// Running handlers get the drain timeout.
	deadline := time.NewTimer(w.opts.DrainTimeout)
	defer deadline.Stop()
drain:
	for {
		w.mu.Lock()
		idle := w.active == 0
		w.mu.Unlock()
		if idle {
			break
		}
		select {
		case <-w.changed:
		case <-deadline.C:
			break drain
		}
	}
	// Then their ctx is cancelled and they are handed back.
	w.mu.Lock()
	var back int
	for _, l := range w.held {
		if l.state == running && !l.lost {
			back++
			w.decide(l, settle{nack: &edgeqv1.NackItem{LeaseToken: l.token,
				ErrorMessage: "worker stopped before the job finished", RetryDelay: immediate}})
		}
	}
	w.mu.Unlock()
	if back > 0 {
		w.opts.Logger.Warn("edgeq: drain timeout: handing back unfinished jobs", "jobs", back)
	}
	stopHandlers(errors.New("edgeq: worker stopped"))

	// Flush every outcome; leases being settled are still extended meanwhile.
	w.sq.Lock()
	w.closing = true
	w.sq.Unlock()
	w.pokeSettler()
	<-settlerDone
	close(hbStop)
	<-hbDone
	// Give handlers that honour their cancelled ctx a moment to return.
	returned := make(chan struct{})
	go func() { handlers.Wait(); close(returned) }()
	select {
	case <-returned:
	case <-time.After(time.Second):
	}
	if fatal != nil {
		return fatal
	}
	return ctx.Err()
}

// stream runs one Lease stream; true if it delivered any message.
func (w *Worker) stream(ctx, handlerCtx context.Context, sem, stopCh chan struct{}, handlers *sync.WaitGroup) (bool, error) {
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
		got = true
		now := time.Now()
		for _, leased := range msg.GetJobs() {
			l := &lease{token: leased.GetLeaseToken(), id: leased.GetJob().GetId(), job: leased.GetJob(),
				state: waiting, due: now.Add(w.opts.LeaseDuration / 2)}
			w.mu.Lock()
			w.held[l.token] = l
			w.mu.Unlock()
			handlers.Add(1)
			go w.work(handlerCtx, l, sem, stopCh, handlers)
		}
	}
}

// work waits for a handler slot, runs the handler and decides the job's outcome.
func (w *Worker) work(handlerCtx context.Context, l *lease, sem, stopCh chan struct{}, handlers *sync.WaitGroup) {
	defer handlers.Done()
	select {
	case sem <- struct{}{}:
	case <-stopCh:
		return // handed back by Run
	}
	defer func() { <-sem }()
	w.mu.Lock()
	if l.state != waiting || l.lost || w.stopping {
		w.mu.Unlock() // lost while waiting (already released), or handed back by Run
		return
	}
	ctx, cancel := context.WithCancelCause(handlerCtx)
	defer cancel(nil)
	l.state, l.cancel = running, cancel
	w.active++
	w.mu.Unlock()

	if d := w.opts.HandlerTimeout; d > 0 {
		t := time.AfterFunc(d, func() { w.timedOut(l, d) })
		defer t.Stop()
	}
	box := &resultBox{}
	err := w.safeHandle(context.WithValue(context.WithValue(ctx, resultKey{}, box), progressKey{}, &l.progress), l)
	out := w.outcome(l, err, box)

	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case l.lost: // logged when it was lost; nothing to send
	case l.state != running:
		w.opts.Logger.Debug("edgeq: handler finished after its job was given up (timeout or drain); its outcome is dropped", "job", l.id)
	default:
		w.decide(l, out)
	}
}

// outcome turns what the handler returned into the settle item of §3.
func (w *Worker) outcome(l *lease, err error, box *resultBox) settle {
	var retry *RetryError
	var fail *FailError
	var p *panicError
	switch {
	case err == nil:
		box.mu.Lock()
		defer box.mu.Unlock()
		return settle{ack: &edgeqv1.AckItem{LeaseToken: l.token, Result: box.data}}
	case errors.As(err, &p):
		return settle{nack: &edgeqv1.NackItem{LeaseToken: l.token, ErrorMessage: clip(err.Error())}}
	case errors.As(err, &fail):
		return settle{nack: &edgeqv1.NackItem{LeaseToken: l.token, ErrorMessage: clip(errString(fail.Err)), Terminal: true}}
	case errors.As(err, &retry):
		item := &edgeqv1.NackItem{LeaseToken: l.token, ErrorMessage: clip(errString(retry.Err)), RetryDelay: immediate}
		if retry.After > 0 {
			item.RetryDelay = dpb.New(retry.After)
		}
		return settle{nack: item}
	default:
		return settle{nack: &edgeqv1.NackItem{LeaseToken: l.token, ErrorMessage: clip(err.Error())}}
	}
}

type panicError struct{ value any }

func (e *panicError) Error() string { return fmt.Sprintf("panic: %v", e.value) }

func (w *Worker) safeHandle(ctx context.Context, l *lease) (err error) {
	ctx, span := handlerSpan(ctx, l.job)
	defer func() { endHandlerSpan(span, err) }() // runs last: sees a recovered panic's err
	defer func() {
		if r := recover(); r != nil {
			err = &panicError{value: r}
			w.opts.Logger.Error("edgeq: handler panicked", "job", l.id, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	return w.handler(ctx, l.job)
}

// timedOut nacks a handler still running after d (server backoff) and cancels its ctx.
func (w *Worker) timedOut(l *lease, d time.Duration) {
	w.mu.Lock()
	if l.state != running || l.lost {
		w.mu.Unlock()
		return
	}
	msg := fmt.Sprintf("handler timed out after %v", d)
	w.decide(l, settle{nack: &edgeqv1.NackItem{LeaseToken: l.token, ErrorMessage: msg}})
	w.mu.Unlock()
	w.opts.Logger.Warn("edgeq: handler timed out; nacking the job", "job", l.id, "after", d)
}

// decide queues l's outcome (w.mu held): nothing else is sent for it, and its handler's
// ctx is cancelled when it was not the handler's own result.
func (w *Worker) decide(l *lease, s settle) {
	if l.state == running {
		w.active--
		w.pokeChanged()
	}
	l.state = settling
	if l.cancel != nil {
		l.cancel(errors.New("edgeq: the job's outcome was decided"))
	}
	s.l = l
	w.sq.Lock()
	w.queue = append(w.queue, s)
	w.sq.Unlock()
	w.pokeSettler()
}

func (w *Worker) pokeChanged() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

func (w *Worker) pokeSettler() {
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

// clip keeps error texts within MaxErrorMessage characters (and valid UTF-8, as protobuf
// strings must be).
func clip(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if utf8.RuneCountInString(s) <= MaxErrorMessage {
		return s
	}
	n := 0
	for i := range s {
		if n == MaxErrorMessage-3 {
			return s[:i] + "..."
		}
		n++
	}
	return s
}

// ------------------------------------------------------------------ heartbeats (§2, §5)

func (w *Worker) heartbeater(stop, done chan struct{}) {
	defer close(done)
	tick := min(max(w.opts.LeaseDuration/8, 50*time.Millisecond), 5*time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		horizon := time.Now().Add(tick)
		w.mu.Lock()
		var due []*lease
		for _, l := range w.held {
			if !l.lost && (!l.due.After(horizon) || l.progress.pending()) {
				due = append(due, l)
			}
		}
		w.mu.Unlock()
		for len(due) > 0 {
			n := min(len(due), heartbeatBatch)
			w.extend(due[:n])
			due = due[n:]
		}
	}
}

// extend sends one Heartbeat call for leases; a STALE/INVALID outcome of a lease whose
// outcome is not on its way loses it: its handler's ctx is cancelled, nothing is sent.
func (w *Worker) extend(leases []*lease) {
	tokens := make([]string, len(leases))
	var progress []*edgeqv1.Progress
	for i, l := range leases {
		tokens[i] = l.token
		if p := l.progress.take(l.token); p != nil {
			progress = append(progress, p)
		}
	}
	sent := time.Now()
	resp, err := w.client.HeartbeatWithProgress(context.Background(), w.opts.LeaseDuration, tokens, progress)
	if err != nil {
		w.opts.Logger.Warn("edgeq: heartbeat failed; retrying on the next tick", "leases", len(leases), "err", err, "reason", Reason(err))
		return
	}
	outcomes := resp.GetOutcomes()
	var lostNow, cancelledNow []*lease
	w.mu.Lock()
	for i, l := range leases {
		if i >= len(outcomes) {
			break
		}
		switch {
		case outcomes[i] == edgeqv1.LeaseOutcome_LEASE_OUTCOME_OK:
			l.due = sent.Add(w.opts.LeaseDuration / 2)
		case l.state == settling || l.lost:
			// Its own Ack/Nack got there first (or will report STALE itself): not lost here.
		default:
			l.lost = true
			delete(w.held, l.token)
			if l.state == running {
				w.active--
				w.pokeChanged()
				l.cancel(errLeaseLost)
			}
			if outcomes[i] == edgeqv1.LeaseOutcome_LEASE_OUTCOME_CANCEL_REQUESTED {
				cancelledNow = append(cancelledNow, l)
			} else {
				lostNow = append(lostNow, l)
			}
			w.lost.Add(1)
		}
	}
	w.mu.Unlock()
	for _, l := range lostNow {
		w.opts.Logger.Warn("edgeq: lease lost (cancelled, expired or re-leased); the handler is cancelled and its outcome will not be sent",
			"job", l.id)
	}
	for _, l := range cancelledNow {
		w.opts.Logger.Info("edgeq: job cancelled (CancelJob); the handler is cancelled and nothing is sent", "job", l.id)
	}
}

// ------------------------------------------------------------------ settling (§4)

// settler sends queued outcomes: one Ack and one Nack call per flush, up to 256 items
// gathered for at most 5 ms after the first.
func (w *Worker) settler(done chan struct{}) {
	defer close(done)
	for {
		w.sq.Lock()
		empty, closing := len(w.queue) == 0, w.closing
		w.sq.Unlock()
		if empty {
			if closing {
				return
			}
			<-w.poke
			continue
		}
		gather := time.NewTimer(settleGather)
	wait:
		for {
			w.sq.Lock()
			full, closing := len(w.queue) >= settleBatch, w.closing
			w.sq.Unlock()
			if full || closing {
				break
			}
			select {
			case <-w.poke:
			case <-gather.C:
				break wait
			}
		}
		gather.Stop()
		w.sq.Lock()
		n := min(len(w.queue), settleBatch)
		batch := append([]settle(nil), w.queue[:n]...)
		w.queue = append(w.queue[:0:0], w.queue[n:]...)
		w.sq.Unlock()
		w.flush(batch)
	}
}

func (w *Worker) flush(batch []settle) {
	var acks, nacks []settle
	for _, s := range batch {
		if s.ack != nil {
			acks = append(acks, s)
		} else {
			nacks = append(nacks, s)
		}
	}
	if len(acks) > 0 {
		w.settleAcks(acks)
	}
	if len(nacks) > 0 {
		w.settleNacks(nacks)
	}
}

func (w *Worker) settleAcks(acks []settle) {
	items := make([]*edgeqv1.AckItem, len(acks))
	for i, s := range acks {
		items[i] = s.ack
	}
	outcomes, err := w.send("ack", acks, func(ctx context.Context) ([]edgeqv1.LeaseOutcome, error) {
		resp, err := w.client.Ack(ctx, items...)
		return resp.GetOutcomes(), err
	})
	if code := status.Code(err); err != nil && (code == codes.InvalidArgument || code == codes.ResourceExhausted) {
		if len(acks) > 1 { // one bad item refuses the whole call: isolate it
			for _, a := range acks {
				w.settleAcks([]settle{a})
			}
			return
		}
		// e.g. a result over the size limit: fail the attempt instead.
		s := acks[0]
		w.opts.Logger.Error("edgeq: ack refused; nacking the job", "job", s.l.id, "err", err, "reason", Reason(err))
		w.settleNacks([]settle{{l: s.l, nack: &edgeqv1.NackItem{LeaseToken: s.l.token, ErrorMessage: clip("ack refused: " + err.Error())}}})
		return
	}
	w.settled("ack", acks, outcomes, err, &w.acked)
}

func (w *Worker) settleNacks(nacks []settle) {
	items := make([]*edgeqv1.NackItem, len(nacks))
	for i, s := range nacks {
		items[i] = s.nack
	}
	outcomes, err := w.send("nack", nacks, func(ctx context.Context) ([]edgeqv1.LeaseOutcome, error) {
		resp, err := w.client.Nack(ctx, items...)
		return resp.GetOutcomes(), err
	})
	if code := status.Code(err); err != nil && len(nacks) > 1 && (code == codes.InvalidArgument || code == codes.ResourceExhausted) {
		for _, n := range nacks {
			w.settleNacks([]settle{n})
		}
		return
	}
	w.settled("nack", nacks, outcomes, err, &w.nacked)
}

// send makes one settle call; a transient failure resends the very same request with
// backoff until the batch's leases would have expired (they are still extended meanwhile,
// so a resend through a failover keeps them).
func (w *Worker) send(what string, batch []settle, call func(context.Context) ([]edgeqv1.LeaseOutcome, error)) ([]edgeqv1.LeaseOutcome, error) {
	backoff := w.opts.MinBackoff
	// The leases were extended at most a lease ago: they lapse within one lease from now
	// (sooner if heartbeats fail too; a resend past that is answered STALE, harmlessly).
	giveUp := time.Now().Add(w.opts.LeaseDuration)
	for {
		outcomes, err := call(context.Background())
		if err == nil || !transientSettle[status.Code(err)] {
			return outcomes, err
		}
		if time.Now().Add(backoff).After(giveUp) {
			return nil, err
		}
		w.opts.Logger.Warn("edgeq: "+what+" failed; resending", "jobs", len(batch), "err", err, "reason", Reason(err), "in", backoff)
		time.Sleep(backoff)
		backoff = min(backoff*2, w.opts.MaxBackoff)
	}
}

// settled logs refused outcomes and a call given up on once per job, and releases the leases.
func (w *Worker) settled(what string, batch []settle, outcomes []edgeqv1.LeaseOutcome, err error, ok *atomic.Int64) {
	w.mu.Lock()
	for _, s := range batch {
		delete(w.held, s.l.token)
	}
	w.mu.Unlock()
	if err != nil {
		ids := make([]string, len(batch))
		for i, s := range batch {
			ids[i] = s.l.id
		}
		w.opts.Logger.Error("edgeq: "+what+" failed; giving up: the leases will expire and the jobs be delivered again",
			"jobs", ids, "code", status.Code(err).String(), "err", err, "reason", Reason(err))
		return
	}
	for i, s := range batch {
		if i >= len(outcomes) {
			break
		}
		if outcomes[i] == edgeqv1.LeaseOutcome_LEASE_OUTCOME_OK {
			ok.Add(1)
			continue
		}
		w.stale.Add(1)
		w.opts.Logger.Warn("edgeq: "+what+" refused: the lease was lost (expired, re-leased or the job cancelled); nothing changed",
			"job", s.l.id, "outcome", outcomes[i].String())
	}
}
