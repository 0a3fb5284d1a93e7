// Command go is the Go SDK's conformance driver: it runs one edgeq Worker whose handler does
// what each job's payload says and reports on stdout (see conformance/README.md).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	edgeq "github.com/edgeq/edgeq/clients/go"
	edgeqv1 "github.com/edgeq/edgeq/clients/go/edgeq/v1"
)

var printMu sync.Mutex

// emit prints one event as a JSON line, written in one call (stdout is unbuffered in Go).
func emit(event string, fields ...any) {
	m := map[string]any{"event": event}
	for i := 0; i+1 < len(fields); i += 2 {
		m[fields[i].(string)] = fields[i+1]
	}
	line, _ := json.Marshal(m)
	printMu.Lock()
	defer printMu.Unlock()
	_, _ = os.Stdout.Write(append(line, '\n'))
}

type spec struct {
	Do      string  `json:"do"`
	Result  *string `json:"result"`
	Message *string `json:"message"`
	AfterMs int64   `json:"after_ms"`
	Ms      int64   `json:"ms"`
	Value   float64 `json:"value"`
}

func (s spec) message(fallback string) string {
	if s.Message != nil {
		return *s.Message
	}
	return fallback
}

func handle(ctx context.Context, job *edgeqv1.Job) error {
	emit("start", "job", job.GetId(), "attempt", job.GetAttempts())
	defer emit("end", "job", job.GetId())
	var s spec
	if err := json.Unmarshal(job.GetPayload(), &s); err != nil {
		return fmt.Errorf("bad payload: %w", err)
	}
	switch s.Do {
	case "succeed":
		if s.Result != nil {
			edgeq.SetResult(ctx, []byte(*s.Result))
		}
		return nil
	case "error":
		return errors.New(s.message("error"))
	case "fail":
		return &edgeq.FailError{Err: errors.New(s.message("fail"))}
	case "retry":
		return &edgeq.RetryError{After: time.Duration(s.AfterMs) * time.Millisecond, Err: errors.New(s.message("retry"))}
	case "panic":
		panic(s.message("panic"))
	case "sleep":
		time.Sleep(time.Duration(s.Ms) * time.Millisecond)
		return nil
	case "progress":
		edgeq.ReportProgress(ctx, s.Value, s.message(""))
		time.Sleep(time.Duration(s.Ms) * time.Millisecond)
		return nil
	case "wait_cancel":
		t := time.NewTimer(time.Duration(s.Ms) * time.Millisecond)
		defer t.Stop()
		select {
		case <-ctx.Done():
			emit("cancelled", "job", job.GetId())
		case <-t.C:
		}
		return nil
	}
	return fmt.Errorf("unknown behaviour %q", s.Do)
}

func main() {
	target := flag.String("target", "", "the server (HOST:PORT, plaintext)")
	queue := flag.String("queue", "", "the queue to work")
	concurrency := flag.Int("concurrency", 0, "Worker concurrency (0: the SDK default)")
	maxInFlight := flag.Int("max-in-flight", 0, "(0: the SDK default)")
	leaseMs := flag.Int("lease-ms", 0, "lease duration (0: the SDK default)")
	handlerTimeoutMs := flag.Int("handler-timeout-ms", 0, "(0: none)")
	drainMs := flag.Int("drain-ms", 0, "drain timeout when stopping (0: the SDK default)")
	flag.Parse()
	if *target == "" || *queue == "" {
		fmt.Fprintln(os.Stderr, "--target and --queue are required")
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	slog.SetDefault(logger)

	c, err := edgeq.Dial(*target)
	if err != nil {
		logger.Error("dial", "err", err)
		os.Exit(1)
	}
	defer c.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	w := edgeq.NewWorker(c, []string{*queue}, handle, edgeq.WorkerOptions{
		Concurrency:    *concurrency,
		MaxInFlight:    *maxInFlight,
		LeaseDuration:  time.Duration(*leaseMs) * time.Millisecond,
		HandlerTimeout: time.Duration(*handlerTimeoutMs) * time.Millisecond,
		DrainTimeout:   time.Duration(*drainMs) * time.Millisecond,
		WorkerID:       "go-conformance",
		Logger:         logger,
	})
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	emit("ready")
	err = <-done
	if ctx.Err() == nil { // stopped by itself, not by SIGTERM
		logger.Error("worker stopped", "err", err)
		os.Exit(1)
	}
	emit("stopped")
}
