package fakehcloud

import (
	"cmp"
	"net/http"
	"strconv"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"
)

// action is an action's state: it runs from start until due.
type action struct {
	schema.Action
	start, due time.Time
}

func serverRef(id int64) schema.ActionResourceReference {
	return schema.ActionResourceReference{ID: id, Type: "server"}
}

func imageRef(id int64) schema.ActionResourceReference {
	return schema.ActionResourceReference{ID: id, Type: "image"}
}

// duration is how long an action of command runs.
func (c *Cloud) duration(command string) time.Duration {
	if d, ok := c.opts.ActionDurations[command]; ok {
		return d
	}
	return c.opts.ActionDuration
}

// newAction records a running action on resources that finishes after
// delay; c.mu must be held. The resources count as busy until it finishes.
func (c *Cloud) newAction(command string, delay time.Duration, resources ...schema.ActionResourceReference) *action {
	started := time.Now()
	a := &action{
		Action: schema.Action{
			ID: c.nextID("action"), Status: "running", Command: command,
			Started: started.UTC().Truncate(time.Second), Resources: resources,
		},
		start: started,
		due:   started.Add(delay),
	}
	c.actions[a.ID] = a
	for _, r := range resources {
		c.busy[r]++
	}
	return a
}

// run finishes a when it is due: effect applies its side effects and its
// error ends the action in error. effect runs without c.mu, so it may call
// Machines (which may call back into the cloud); run needs c.mu held.
func (c *Cloud) run(a *action, effect func() error) {
	if c.closed {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		t := time.NewTimer(time.Until(a.due))
		defer t.Stop()
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		err := effect()
		c.mu.Lock()
		defer c.mu.Unlock()
		finished := time.Now().UTC().Truncate(time.Second)
		a.Finished = &finished
		a.Progress = 100
		a.Status = "success"
		if err != nil {
			a.Status = "error"
			a.Error = &schema.ActionError{Code: "action_failed", Message: err.Error()}
		}
		for _, r := range a.Resources {
			if c.busy[r]--; c.busy[r] <= 0 {
				delete(c.busy, r)
			}
		}
	}()
}

// view renders a with its progress; c.mu must be held.
func (a *action) view() schema.Action {
	v := a.Action
	if total := a.due.Sub(a.start); v.Status == "running" && total > 0 {
		v.Progress = min(99, int(100*time.Since(a.start)/total))
	}
	return v
}

var actionSort = sortFields[*action]{
	"id":      func(a, b *action) int { return cmp.Compare(a.ID, b.ID) },
	"command": func(a, b *action) int { return cmp.Compare(a.Command, b.Command) },
	"status":  func(a, b *action) int { return cmp.Compare(a.Status, b.Status) },
	"started": func(a, b *action) int { return a.Started.Compare(b.Started) },
	"finished": func(a, b *action) int {
		return cmp.Compare(finishedUnix(a), finishedUnix(b))
	},
}

func finishedUnix(a *action) int64 {
	if a.Finished == nil {
		return 0
	}
	return a.Finished.UnixNano()
}

// listActions answers GET /actions?id=..&id=.., which hcloud-go polls.
func (c *Cloud) listActions(r *http.Request) (int, any, error) {
	q := r.URL.Query()
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*action
	for _, a := range c.actions {
		if matchAny(q, "id", strconv.FormatInt(a.ID, 10)) && matchAny(q, "status", a.Status) {
			out = append(out, a)
		}
	}
	if err := sortItems(out, q["sort"], actionSort); err != nil {
		return 0, nil, err
	}
	return listResponse(q, "actions", out, (*action).view)
}
