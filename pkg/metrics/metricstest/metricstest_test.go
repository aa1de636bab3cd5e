package metricstest

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

var now = time.UnixMilli(1777896000000)

// Decode takes what the specification allows and refuses what it does not.
func TestDecode(t *testing.T) {
	const aws = `"_aws":{"Timestamp":1777896000000,"CloudWatchMetrics":[` +
		`{"Namespace":"ns","Dimensions":[["F","Step"],["F"]],"Metrics":[{"Name":"D","Unit":"Seconds"},{"Name":"N"}]}]}`
	tests := []struct {
		name    string
		line    string
		want    []Metric
		wantErr string
	}{
		{
			name: "two dimension sets, a value array, no unit",
			line: `{"msg":"x",` + aws + `,"F":"fn","Step":"install","D":1.5,"N":[1,2,3]}`,
			want: []Metric{
				{Namespace: "ns", Name: "D", Unit: "Seconds", Dimensions: map[string]string{"F": "fn", "Step": "install"}, Value: 1.5},
				{Namespace: "ns", Name: "D", Unit: "Seconds", Dimensions: map[string]string{"F": "fn"}, Value: 1.5},
				{Namespace: "ns", Name: "N", Dimensions: map[string]string{"F": "fn", "Step": "install"}, Value: 6},
				{Namespace: "ns", Name: "N", Dimensions: map[string]string{"F": "fn"}, Value: 6},
			},
		},
		{name: "not JSON", line: `START RequestId: 1`, wantErr: "not a JSON object"},
		{name: "no _aws", line: `{"msg":"x"}`, wantErr: "no _aws member"},
		{name: "nested _aws", line: `{"g":{` + aws + `}}`, wantErr: "no _aws member"},
		{name: "no timestamp", line: `{"_aws":{"CloudWatchMetrics":[]}}`, wantErr: "Timestamp is missing"},
		{name: "timestamp in seconds", line: `{"_aws":{"Timestamp":1777896000,"CloudWatchMetrics":[]}}`, wantErr: "outside what CloudWatch accepts"},
		{name: "fractional timestamp", line: `{"_aws":{"Timestamp":1777896000000.5,"CloudWatchMetrics":[]}}`, wantErr: "not milliseconds"},
		{name: "no directives", line: `{"_aws":{"Timestamp":1777896000000}}`, wantErr: "CloudWatchMetrics is missing"},
		{name: "unknown member", line: `{"_aws":{"Timestamp":1777896000000,"CloudWatchMetrics":[],"Extra":1}}`, wantErr: `member "Extra"`},
		{name: "member of another case", line: `{"_aws":{"timestamp":1777896000000,"CloudWatchMetrics":[]}}`, wantErr: `member "timestamp"`},
		{name: "no namespace", line: `{"_aws":{"Timestamp":1777896000000,"CloudWatchMetrics":[{"Dimensions":[],"Metrics":[]}]}}`,
			wantErr: "Namespace is missing"},
		{name: "no dimensions", line: `{"_aws":{"Timestamp":1777896000000,"CloudWatchMetrics":[{"Namespace":"ns","Metrics":[]}]}}`,
			wantErr: "Dimensions is missing"},
		{name: "no metrics", line: `{"_aws":{"Timestamp":1777896000000,"CloudWatchMetrics":[{"Namespace":"ns","Dimensions":[]}]}}`,
			wantErr: "Metrics is missing"},
		{name: "dimension without a member", line: `{"msg":"x",` + aws + `,"F":"fn","D":1,"N":1}`, wantErr: "dimension Step"},
		{name: "dimension not a string", line: `{"msg":"x",` + aws + `,"F":"fn","Step":3,"D":1,"N":1}`, wantErr: "dimension Step"},
		{name: "empty dimension value", line: `{"msg":"x",` + aws + `,"F":"","Step":"install","D":1,"N":1}`, wantErr: "dimension F"},
		{name: "metric without a value", line: `{"msg":"x",` + aws + `,"F":"fn","Step":"install","D":1}`, wantErr: "metric N: no root member"},
		{name: "metric value a string", line: `{"msg":"x",` + aws + `,"F":"fn","Step":"install","D":"1","N":1}`, wantErr: "metric D: its value"},
		{name: "unknown unit", line: `{"_aws":{"Timestamp":1777896000000,"CloudWatchMetrics":[{"Namespace":"ns","Dimensions":[],` +
			`"Metrics":[{"Name":"D","Unit":"Hours"}]}]},"D":1}`, wantErr: `unit "Hours"`},
		{name: "storage resolution", line: `{"_aws":{"Timestamp":1777896000000,"CloudWatchMetrics":[{"Namespace":"ns","Dimensions":[],` +
			`"Metrics":[{"Name":"D","StorageResolution":5}]}]},"D":1}`, wantErr: "storage resolution 5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode([]byte(tt.line), now)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("Decode = %+v, %v; want an error with %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Decode =\n%+v\nwant\n%+v", got, tt.want)
			}
			if !IsEMF([]byte(tt.line)) {
				t.Error("IsEMF = false")
			}
		})
	}
}
