package deploy

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/dlclark/regexp2"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// ecmaRegexp is a JSON schema pattern as JavaScript reads it: the SAM schema
// uses look-ahead, which Go's regexp lacks.
type ecmaRegexp struct{ re *regexp2.Regexp }

func (r ecmaRegexp) MatchString(s string) bool {
	ok, err := r.re.MatchString(s)
	return err == nil && ok
}

func (r ecmaRegexp) String() string { return r.re.String() }

func compileECMA(pattern string) (jsonschema.Regexp, error) {
	re, err := regexp2.Compile(pattern, regexp2.ECMAScript)
	if err != nil {
		return nil, err
	}
	return ecmaRegexp{re}, nil
}

// samSchema compiles the SAM JSON schema SAM_SCHEMA names (relative paths
// from the repository root); it skips the test when SAM_SCHEMA is unset.
func samSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	path := os.Getenv("SAM_SCHEMA")
	if path == "" {
		t.Skip("SAM_SCHEMA is not set: template.yaml is not validated against the SAM schema " +
			"(CI sets it to ../shared/reference/sam.schema.json)")
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(repoRoot(t), path)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("SAM_SCHEMA: %v", err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatalf("SAM_SCHEMA %s: %v", path, err)
	}
	c := jsonschema.NewCompiler()
	c.UseRegexpEngine(compileECMA)
	const url = "file:///sam.schema.json"
	if err := c.AddResource(url, doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(url)
	if err != nil {
		t.Fatalf("compile %s: %v", path, err)
	}
	return s
}

// asJSON returns v as the schema validator reads JSON (numbers as
// json.Number), a deep copy.
func asJSON(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestTemplateMatchesSAMSchema validates template.yaml, in its JSON form,
// against the SAM schema, and makes sure the schema catches broken copies
// of it: a validator that accepts anything fails here.
func TestTemplateMatchesSAMSchema(t *testing.T) {
	schema := samSchema(t)
	tpl := loadTemplate(t)
	if err := schema.Validate(asJSON(t, tpl)); err != nil {
		t.Fatalf("template.yaml does not match the SAM schema:\n%v", err)
	}
	tests := []struct {
		name   string
		mutate func(tpl map[string]any)
	}{
		{"misspelled function property", func(tpl map[string]any) {
			obj(at(tpl, "Resources", "Builder", "Properties"))["Timout"] = 900
		}},
		{"unknown event type", func(tpl map[string]any) {
			obj(at(tpl, "Resources", "Poller", "Properties", "Events", "Schedule"))["Type"] = "ScheduleV3"
		}},
		{"unknown schedule property", func(tpl map[string]any) {
			obj(at(tpl, "Resources", "Poller", "Properties", "Events", "Schedule", "Properties"))["Rate"] = "1h"
		}},
		{"unknown failure destination type", func(tpl map[string]any) {
			obj(at(tpl, "Resources", "Builder", "Properties", "EventInvokeConfig", "DestinationConfig", "OnFailure"))["Type"] = "Queue"
		}},
		{"resource without type", func(tpl map[string]any) {
			delete(obj(at(tpl, "Resources", "BuildFailures")), "Type")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			broken := asJSON(t, tpl).(map[string]any)
			tt.mutate(broken)
			if err := schema.Validate(broken); err == nil {
				t.Error("the schema accepts the broken template")
			}
		})
	}
}
