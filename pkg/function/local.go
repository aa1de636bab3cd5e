package function

import (
	"context"
	"errors"
	"os"
	"time"
)

// LocalRun tells whether the process runs as a Lambda function on the
// developer's machine rather than in AWS: `sam local invoke` sets
// AWS_SAM_LOCAL=true in the function's environment (aws-sam-cli,
// samcli/local/lambdafn/env_vars.py, _get_aws_variables), and so does
// scripts/invoke (make invoke). There AWS_LAMBDA_FUNCTION_NAME is the
// template's logical id (Builder), not a deployed function: a local run
// must not invoke functions by name in an AWS account.
func LocalRun() bool { return InLambda() && os.Getenv("AWS_SAM_LOCAL") == "true" }

// ErrLocalTimeUp is the cause of a WithoutDeadline context that ended
// because the invocation's deadline came near.
var ErrLocalTimeUp = errors.New("the local invocation's time (AWS_LAMBDA_FUNCTION_TIMEOUT) is up; " +
	"invoke the same event again to go on: the build's state is in the cloud")

// WithoutDeadline returns a context with parent's values that reports no
// deadline, so that code budgeting its steps by the deadline works as on
// the command line, and that is canceled when parent is, or margin before
// parent's deadline with cause ErrLocalTimeUp, whichever comes first.
func WithoutDeadline(parent context.Context, margin time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(parent))
	stop := context.AfterFunc(parent, func() { cancel(context.Cause(parent)) })
	var timer *time.Timer
	if d, ok := parent.Deadline(); ok {
		timer = time.AfterFunc(time.Until(d)-margin, func() { cancel(ErrLocalTimeUp) })
	}
	return ctx, func() {
		stop()
		if timer != nil {
			timer.Stop()
		}
		cancel(context.Canceled)
	}
}
