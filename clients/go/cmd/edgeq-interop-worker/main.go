// Command edgeq-interop-worker runs the Go Worker on one queue, acking every job, and exits
// after -jobs handler calls (or -timeout). Used by tests/test_interop.py.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	edgeq "github.com/edgeq/edgeq/clients/go"
	edgeqv1 "github.com/edgeq/edgeq/clients/go/edgeq/v1"
)

func main() {
	target := flag.String("target", "127.0.0.1:50051", "edgeq server")
	queue := flag.String("queue", "interop", "queue to work")
	jobs := flag.Int64("jobs", 1, "exit after this many jobs")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after")
	flag.Parse()
	c, err := edgeq.Dial(*target)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var done atomic.Int64
	w := edgeq.NewWorker(c, []string{*queue}, func(context.Context, *edgeqv1.Job) error {
		if done.Add(1) >= *jobs {
			go cancel()
		}
		return nil
	}, edgeq.WorkerOptions{Concurrency: 4, WorkerID: "go-interop"})
	_ = w.Run(ctx)
	fmt.Println(done.Load())
	if done.Load() < *jobs {
		os.Exit(1)
	}
}
