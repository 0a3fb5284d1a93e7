package edgeq

// Errors and retried writes: the rich error details the server sends (a google.rpc.Status
// in the grpc-status-details-bin trailer, read with status.FromError(err).Details()), the
// CommittedNotReplicatedError a write gets when it committed on the primary but replicas
// did not confirm it in time, the generated idempotency keys, and retryWrite, which resends
// such a write unchanged within the call's deadline.

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of the server's errors.
const ErrorDomain = "edgeq.v1"

// ReasonCommittedNotReplicated is the ErrorInfo reason of a write that committed on the
// primary but was not confirmed by replicas in time (status ABORTED, metadata "txid").
const ReasonCommittedNotReplicated = "COMMITTED_NOT_REPLICATED"

// ReasonEdgeLogFull is the ErrorInfo reason of an Enqueue refused because the answering
// node's edge log is at its cap (status RESOURCE_EXHAUSTED, with a RetryInfo delay).
// Nothing was stored: the same call may be sent again after RetryDelay(err). The client
// does not resend it by itself.
const ReasonEdgeLogFull = "EDGE_LOG_FULL"

// AutoKeyPrefix starts the idempotency keys the client generates for jobs sent without one.
const AutoKeyPrefix = "auto-"

// writeBackoff bounds the jittered pause between resends of a write answered
// COMMITTED_NOT_REPLICATED (doubling from the first to the second).
var writeBackoff = [2]time.Duration{50 * time.Millisecond, time.Second}

// ErrCommittedNotReplicated matches (errors.Is) every *CommittedNotReplicatedError.
var ErrCommittedNotReplicated = errors.New("edgeq: committed on the primary, not confirmed by replicas in time")

// CommittedNotReplicatedError is returned when a write committed on the primary but
// replicas did not confirm it before the call's deadline, although the client resent it
// (same idempotency keys, same lease tokens) until then. Sending the same request again
// is safe: it cannot duplicate. status.Code(err) is codes.Aborted.
type CommittedNotReplicatedError struct {
	// Txid is the commit's txid (0 if the server did not say).
	Txid uint64
	// Metadata is the ErrorInfo metadata ("txid", ...).
	Metadata map[string]string
	// IdempotencyKeys are the Enqueue's keys in request order (nil for other calls).
	IdempotencyKeys []string
	st              *status.Status
}

func (e *CommittedNotReplicatedError) Error() string {
	return fmt.Sprintf("edgeq: %s (%s, txid %d)", e.st.Message(), ReasonCommittedNotReplicated, e.Txid)
}

// Is makes errors.Is(err, ErrCommittedNotReplicated) true.
func (e *CommittedNotReplicatedError) Is(target error) bool {
	return target == ErrCommittedNotReplicated
}

// GRPCStatus keeps status.Code / status.Convert working on the error.
func (e *CommittedNotReplicatedError) GRPCStatus() *status.Status { return e.st }

// Reason is ReasonCommittedNotReplicated.
func (e *CommittedNotReplicatedError) Reason() string { return ReasonCommittedNotReplicated }

// ErrorInfo is the google.rpc.ErrorInfo in err's status details (nil if there is none).
func ErrorInfo(err error) *errdetails.ErrorInfo {
	st, ok := status.FromError(err)
	if !ok || st == nil {
		return nil
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

// Reason is the ErrorInfo reason of a failed call (e.g. "COMMITTED_NOT_REPLICATED",
// "NO_PRIMARY", "NOT_PRIMARY", "EDGE_LOG_FULL"), or "" when the server sent none.
func Reason(err error) string { return ErrorInfo(err).GetReason() }

// Field is the request field a failed call names (ErrorInfo metadata "field", e.g.
// "jobs[2].queue"), or "" when it names none.
func Field(err error) string { return ErrorInfo(err).GetMetadata()["field"] }

// RetryDelay is the google.rpc.RetryInfo delay in err's status details, if any.
func RetryDelay(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok || st == nil {
		return 0, false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.RetryInfo); ok && info.GetRetryDelay() != nil {
			return info.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// convertErr turns an ABORTED COMMITTED_NOT_REPLICATED status into a
// *CommittedNotReplicatedError; any other error is returned as it is.
func convertErr(err error) error {
	if err == nil || status.Code(err) != codes.Aborted {
		return err
	}
	info := ErrorInfo(err)
	if info.GetReason() != ReasonCommittedNotReplicated || info.GetDomain() != ErrorDomain {
		return err
	}
	e := &CommittedNotReplicatedError{Metadata: info.GetMetadata(), st: status.Convert(err)}
	_, _ = fmt.Sscan(info.GetMetadata()["txid"], &e.Txid)
	return e
}

// retryWrite runs call, and runs it again while it fails with COMMITTED_NOT_REPLICATED,
// after a jittered backoff (at least the server's RetryInfo delay), until ctx is done. call
// must send the same request every time. If ctx ends after such an answer, the
// *CommittedNotReplicatedError is returned (it did commit), not the deadline.
func retryWrite[T any](ctx context.Context, call func(context.Context) (T, error)) (T, error) {
	backoff := writeBackoff[0]
	var last *CommittedNotReplicatedError
	for {
		resp, err := call(ctx)
		if err == nil {
			return resp, nil
		}
		err = convertErr(err)
		var zero T
		var cnr *CommittedNotReplicatedError
		if !errors.As(err, &cnr) {
			if last != nil && (ctx.Err() != nil || status.Code(err) == codes.DeadlineExceeded) {
				return zero, last
			}
			return zero, err
		}
		last = cnr
		pause := time.Duration(mrand.Int64N(int64(backoff)) + 1)
		if d, ok := RetryDelay(err); ok && d > pause {
			pause = d
		}
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= pause {
			return zero, err
		}
		timer := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			timer.Stop()
			return zero, err
		case <-timer.C:
		}
		backoff = min(backoff*2, writeBackoff[1])
	}
}

// AutoIdempotencyKey is a fresh key as the client generates it for a job sent without
// one: "auto-" and a UUIDv7 (RFC 9562: 48-bit Unix milliseconds, version 7, 74 random bits).
func AutoIdempotencyKey() string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[0:8], uint64(time.Now().UnixMilli())<<16)
	_, _ = rand.Read(b[6:])
	b[6] = b[6]&0x0f | 0x70 // version 7
	b[8] = b[8]&0x3f | 0x80 // variant 10
	return fmt.Sprintf("%s%x-%x-%x-%x-%x", AutoKeyPrefix, b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
