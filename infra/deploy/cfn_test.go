package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// repoRoot is the module root, two directories above this file.
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test source")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// readRepoFile reads a file by its path in the repository.
func readRepoFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), path))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// shortForms are CloudFormation's YAML tags for intrinsic functions and the
// long-form keys they stand for.
var shortForms = map[string]string{
	"!Ref":         "Ref",
	"!Condition":   "Condition",
	"!Sub":         "Fn::Sub",
	"!GetAtt":      "Fn::GetAtt",
	"!If":          "Fn::If",
	"!Equals":      "Fn::Equals",
	"!Not":         "Fn::Not",
	"!And":         "Fn::And",
	"!Or":          "Fn::Or",
	"!Select":      "Fn::Select",
	"!Split":       "Fn::Split",
	"!Join":        "Fn::Join",
	"!FindInMap":   "Fn::FindInMap",
	"!ImportValue": "Fn::ImportValue",
	"!Base64":      "Fn::Base64",
	"!Cidr":        "Fn::Cidr",
	"!GetAZs":      "Fn::GetAZs",
}

// parseTemplate reads a CloudFormation YAML template into the values JSON
// would give (map[string]any, []any, string, int, float64, bool, nil), with
// short-form intrinsics in their long form, as CloudFormation reads them.
func parseTemplate(b []byte) (map[string]any, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("parse template: %w", err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, fmt.Errorf("parse template: want one YAML document")
	}
	v, err := fromNode(doc.Content[0])
	if err != nil {
		return nil, fmt.Errorf("parse template: %w", err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("parse template: top level is %T, want a mapping", v)
	}
	return m, nil
}

func fromNode(n *yaml.Node) (any, error) {
	if fn, ok := shortForms[n.Tag]; ok {
		v, err := shortFormArg(n)
		if err != nil {
			return nil, fmt.Errorf("line %d: %s: %w", n.Line, n.Tag, err)
		}
		return map[string]any{fn: v}, nil
	}
	if strings.HasPrefix(n.Tag, "!") && !strings.HasPrefix(n.Tag, "!!") {
		return nil, fmt.Errorf("line %d: unknown tag %s", n.Line, n.Tag)
	}
	switch n.Kind {
	case yaml.AliasNode:
		return fromNode(n.Alias)
	case yaml.MappingNode:
		m := make(map[string]any, len(n.Content)/2)
		for i := 0; i < len(n.Content); i += 2 {
			k, vn := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: mapping key is not a scalar", k.Line)
			}
			// CloudFormation's behaviour with duplicate keys is undefined.
			if _, dup := m[k.Value]; dup {
				return nil, fmt.Errorf("line %d: duplicate key %q", k.Line, k.Value)
			}
			v, err := fromNode(vn)
			if err != nil {
				return nil, err
			}
			m[k.Value] = v
		}
		return m, nil
	case yaml.SequenceNode:
		s := make([]any, 0, len(n.Content))
		for _, c := range n.Content {
			v, err := fromNode(c)
			if err != nil {
				return nil, err
			}
			s = append(s, v)
		}
		return s, nil
	default:
		var v any
		if err := n.Decode(&v); err != nil {
			return nil, fmt.Errorf("line %d: %w", n.Line, err)
		}
		return v, nil
	}
}

// shortFormArg converts the argument of a short-form intrinsic: a scalar is
// always a string ("!Ref 5" names a logical id "5"), and "!GetAtt A.B"
// becomes ["A", "B"].
func shortFormArg(n *yaml.Node) (any, error) {
	if n.Kind != yaml.ScalarNode {
		plain := *n
		plain.Tag = ""
		return fromNode(&plain)
	}
	if n.Tag != "!GetAtt" {
		return n.Value, nil
	}
	res, attr, ok := strings.Cut(n.Value, ".")
	if !ok {
		return nil, fmt.Errorf("%q is not Resource.Attribute", n.Value)
	}
	return []any{res, attr}, nil
}

func TestParseTemplateShortForms(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       string // %v of the "v" value
		wantErr    bool
	}{
		{"ref", "v: !Ref Name", "map[Ref:Name]", false},
		{"sub string", "v: !Sub ${AWS::StackName}-x", "map[Fn::Sub:${AWS::StackName}-x]", false},
		{"sub list", `v: !Sub ["a${X}", {X: !Ref Y}]`, "map[Fn::Sub:[a${X} map[X:map[Ref:Y]]]]", false},
		{"getatt dotted", "v: !GetAtt Queue.Arn", "map[Fn::GetAtt:[Queue Arn]]", false},
		{"getatt list", "v: !GetAtt [Queue, Arn]", "map[Fn::GetAtt:[Queue Arn]]", false},
		{"nested", "v: !If [C, !Select [0, !Split [':', !Ref P]], !Ref AWS::NoValue]",
			"map[Fn::If:[C map[Fn::Select:[0 map[Fn::Split:[: map[Ref:P]]]]] map[Ref:AWS::NoValue]]]", false},
		{"condition", "v: !And [!Condition A, !Not [!Equals [a, b]]]",
			"map[Fn::And:[map[Condition:A] map[Fn::Not:[map[Fn::Equals:[a b]]]]]]", false},
		{"plain types", "v: [1, true, x, 1.5, null]", "[1 true x 1.5 <nil>]", false},
		{"unknown tag", "v: !Bogus x", "", true},
		{"getatt without attribute", "v: !GetAtt Queue", "", true},
		{"duplicate key", "v: 1\nv: 2", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := parseTemplate([]byte(tt.yaml))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parsed %v, want an error", m)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprintf("%v", m["v"]); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}
