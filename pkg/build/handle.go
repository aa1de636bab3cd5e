package build

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/backoff"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
)

// The entry points: HandlePayload is the Lambda handler, Handle one
// request in one invocation, RunUntilDone a request followed to its end in
// this process (the builder without AWS), Build one target.

// HandlePayload is the Lambda handler: it decodes the payload strictly and
// handles the request.
func (b *Builder) HandlePayload(ctx context.Context, payload json.RawMessage) (Response, error) {
	r, err := ParseRequest(payload)
	if err != nil {
		return Response{}, err
	}
	resp, err := b.Handle(ctx, r)
	// A build that failed deterministically would fail the same way when
	// Lambda retried it, which it does only for a function error: the
	// response says it failed, and its failure is recorded (failure.go).
	var failed *FailedError
	if errors.As(err, &failed) {
		return resp, nil
	}
	return resp, err
}

// Handle builds every target of the request side by side, each as far as
// this invocation can, and starts the next build of its queue when its
// target is done. It returns *RetryError (with the response) when any
// target is to be retried, else *FailedError when any failed.
func (b *Builder) Handle(ctx context.Context, r Request) (Response, error) {
	ctx = withInvocationStart(ctx, b.now())
	if err := b.verify(r); err != nil {
		return Response{}, err
	}
	if err := b.resolveSchematics(ctx, r); err != nil {
		return Response{}, err
	}
	resp, err := b.each(ctx, r, b.Build)
	if err != nil {
		return resp, err
	}
	return b.handOn(ctx, r, resp)
}

// RunUntilDone handles the request in this process and follows its
// continuations until no target is in progress: the builder without AWS.
func (b *Builder) RunUntilDone(ctx context.Context, r Request) (Response, error) {
	if err := b.verify(r); err != nil {
		return Response{}, err
	}
	if err := b.resolveSchematics(ctx, r); err != nil {
		return Response{}, err
	}
	var all Response
	for {
		resp, err := b.each(ctx, r, b.buildUntilDone)
		all.Results = append(all.Results, resp.Results...)
		if err == nil && ctx.Err() != nil {
			return all, ctx.Err()
		}
		// The queue goes on from a build that is done, as in Handle.
		if err != nil || len(r.Queue) == 0 || len(resp.Results) != 1 || resp.Results[0].State != Done {
			return all, err
		}
		r = r.next()
	}
}

func (b *Builder) buildUntilDone(ctx context.Context, t Target, req Request) Result {
	for {
		res := b.Build(withInvocationStart(ctx, b.now()), t, req)
		if res.State != InProgress {
			return res
		}
		if res.next != nil {
			req.Continuation = res.next
		}
		// Another holder of the lease, or a snapshot still being created.
		if backoff.Sleep(ctx, b.pollWait) != nil {
			return res
		}
	}
}

// each runs build for every target of the request concurrently.
func (b *Builder) each(ctx context.Context, r Request, build func(context.Context, Target, Request) Result) (Response, error) {
	targets, err := b.Targets(r)
	if err != nil {
		return Response{}, err
	}
	results := make([]Result, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Go(func() { results[i] = build(ctx, t, r) })
	}
	wg.Wait()
	resp := Response{Results: results}
	// A retry runs the whole request again; its failed targets are then
	// held back by their failure records.
	switch {
	case slices.ContainsFunc(results, func(res Result) bool { return res.retry }):
		return resp, &RetryError{Results: results}
	case slices.ContainsFunc(results, func(res Result) bool { return res.State == Failed }):
		return resp, &FailedError{Results: results}
	}
	return resp, nil
}

// Build drives one target as far as this invocation can.
func (b *Builder) Build(ctx context.Context, t Target, req Request) Result {
	r := &run{b: b, t: t, force: req.Force, queue: req.Queue, log: b.log.With("target", t.String()),
		res: Result{Target: t, Server: t.Name(b.opts.Cluster)}, started: invocationStart(ctx, b.now())}
	if c := req.Continuation; c != nil {
		r.origin, r.idle = c.Origin, c.Idle
	} else {
		r.origin = b.owner(ctx)
	}
	var requests cloud.RequestCounter
	res := r.build(cloud.CountRequests(ctx, &requests))
	r.ended(ctx, requests.Count())
	return res
}
