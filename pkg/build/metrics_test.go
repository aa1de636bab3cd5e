package build

import "testing"

// outcomeOf names every way a run ends by its result.
func TestOutcomeOf(t *testing.T) {
	tests := []struct {
		name string
		run  run
		want string
	}{
		{"done after steps", run{res: Result{State: Done}, progressed: true}, OutcomePublished},
		{"done at the check", run{res: Result{State: Done}}, OutcomeExists},
		{"failed", run{res: Result{State: Failed, Code: "download"}}, OutcomeFailed},
		{"failed at the check", run{res: Result{State: Failed, Code: "not-available"}}, OutcomeFailed},
		{"backed off", run{res: Result{State: Failed, Code: "backed-off"}}, OutcomeHeld},
		{"parked", run{res: Result{State: Failed, Code: "parked"}}, OutcomeHeld},
		{"foreign", run{res: Result{State: Failed, Code: "foreign"}}, OutcomeRefused},
		{"other deployment", run{res: Result{State: Failed, Code: "other-deployment"}}, OutcomeRefused},
		{"continued", run{res: Result{State: InProgress, next: &Continuation{}}, progressed: true}, OutcomeContinued},
		{"continuation not sent", run{res: Result{State: InProgress, next: &Continuation{}, retry: true}}, OutcomeRetry},
		{"to be retried", run{res: Result{State: InProgress, Code: "api-server_error", retry: true}}, OutcomeRetry},
		{"lease held", run{res: Result{State: InProgress}}, OutcomeBusy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.run.outcomeOf(); got != tt.want {
				t.Errorf("outcome of %+v = %s, want %s", tt.run.res, got, tt.want)
			}
		})
	}
}
