package deploy

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// Pseudo parameters of the stack the evaluator pretends to deploy.
var pseudo = map[string]string{
	"AWS::StackName": "hcloud-k8s",
	"AWS::Region":    "eu-central-1",
	"AWS::AccountId": "123456789012",
	"AWS::Partition": "aws",
}

// deployment evaluates the intrinsic functions of a template for given
// parameter values, as CloudFormation does when it deploys it: conditions
// decide Fn::If, AWS::NoValue removes, Fn::Sub, Fn::Select and Fn::Split
// compute. A Ref to a resource stays {"Ref": name} and Fn::GetAtt becomes
// "Resource.Attribute": the values CloudFormation only knows later.
type deployment struct {
	tpl    map[string]any
	params map[string]string
	conds  map[string]bool
}

// noValue is what AWS::NoValue evaluates to; containers drop it.
type noValue struct{}

// deploy evaluates the template's conditions for params (defaults fill the
// rest; a parameter without default must be given).
func deploy(tpl map[string]any, params map[string]string) (*deployment, error) {
	d := &deployment{tpl: tpl, params: map[string]string{}, conds: map[string]bool{}}
	for name, p := range obj(tpl["Parameters"]) {
		v, ok := params[name]
		if !ok {
			def, hasDef := obj(p)["Default"]
			if !hasDef {
				return nil, fmt.Errorf("parameter %s has no default and no value", name)
			}
			v = fmt.Sprint(def)
		}
		d.params[name] = v
	}
	for name := range params {
		if _, ok := d.params[name]; !ok {
			return nil, fmt.Errorf("parameter %s is not in the template", name)
		}
	}
	for name := range obj(tpl["Conditions"]) {
		if _, err := d.condition(name); err != nil {
			return nil, err
		}
	}
	return d, nil
}

func (d *deployment) condition(name string) (bool, error) {
	if v, ok := d.conds[name]; ok {
		return v, nil
	}
	expr, ok := obj(d.tpl["Conditions"])[name]
	if !ok {
		return false, fmt.Errorf("condition %s is not defined", name)
	}
	v, err := d.eval(expr)
	if err != nil {
		return false, fmt.Errorf("condition %s: %w", name, err)
	}
	b, ok := v.(bool)
	if !ok {
		return false, fmt.Errorf("condition %s is %v, not a boolean", name, v)
	}
	d.conds[name] = b
	return b, nil
}

// resourceExists reports whether a resource is deployed: it exists and its
// Condition, if any, holds.
func (d *deployment) resourceExists(name string) (bool, error) {
	r, ok := obj(d.tpl["Resources"])[name]
	if !ok {
		return false, nil
	}
	c, ok := obj(r)["Condition"].(string)
	if !ok {
		return true, nil
	}
	return d.condition(c)
}

func (d *deployment) eval(v any) (any, error) {
	switch v := v.(type) {
	case []any:
		out := make([]any, 0, len(v))
		for _, e := range v {
			r, err := d.eval(e)
			if err != nil {
				return nil, err
			}
			if _, drop := r.(noValue); !drop {
				out = append(out, r)
			}
		}
		return out, nil
	case map[string]any:
		if len(v) == 1 {
			for fn, arg := range v {
				if r, ok, err := d.intrinsic(fn, arg); ok || err != nil {
					return r, err
				}
			}
		}
		out := make(map[string]any, len(v))
		for k, e := range v {
			r, err := d.eval(e)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			if _, drop := r.(noValue); !drop {
				out[k] = r
			}
		}
		return out, nil
	}
	return v, nil
}

// intrinsic evaluates fn(arg); ok is false when fn is no intrinsic function.
func (d *deployment) intrinsic(fn string, arg any) (_ any, ok bool, _ error) {
	switch fn {
	case "Ref":
		r, err := d.ref(arg)
		return r, true, err
	case "Condition":
		name, _ := arg.(string)
		r, err := d.condition(name)
		return r, true, err
	case "Fn::GetAtt":
		a, _ := arg.([]any)
		if len(a) != 2 {
			return nil, true, fmt.Errorf("Fn::GetAtt %v: want [Resource, Attribute]", arg)
		}
		name := fmt.Sprint(a[0])
		if ok, err := d.resourceExists(name); !ok || err != nil {
			return nil, true, fmt.Errorf("Fn::GetAtt of %s, which is not deployed (%v)", name, err)
		}
		return name + "." + fmt.Sprint(a[1]), true, nil
	case "Fn::Sub":
		r, err := d.sub(arg)
		return r, true, err
	case "Fn::If":
		a, _ := arg.([]any)
		if len(a) != 3 {
			return nil, true, fmt.Errorf("Fn::If %v: want [Condition, then, else]", arg)
		}
		name, _ := a[0].(string)
		c, err := d.condition(name)
		if err != nil {
			return nil, true, err
		}
		if c {
			r, err := d.eval(a[1])
			return r, true, err
		}
		r, err := d.eval(a[2])
		return r, true, err
	case "Fn::Equals":
		a, err := d.evalList(fn, arg, 2)
		if err != nil {
			return nil, true, err
		}
		return fmt.Sprint(a[0]) == fmt.Sprint(a[1]), true, nil
	case "Fn::Not":
		a, err := d.evalList(fn, arg, 1)
		if err != nil {
			return nil, true, err
		}
		b, isBool := a[0].(bool)
		if !isBool {
			return nil, true, fmt.Errorf("Fn::Not of %v", a[0])
		}
		return !b, true, nil
	case "Fn::Select":
		a, err := d.evalList(fn, arg, 2)
		if err != nil {
			return nil, true, err
		}
		i, err := strconv.Atoi(fmt.Sprint(a[0]))
		list, isList := a[1].([]any)
		if err != nil || !isList || i < 0 || i >= len(list) {
			// CloudFormation fails the deployment here.
			return nil, true, fmt.Errorf("Fn::Select %v of %v: out of range", a[0], a[1])
		}
		return list[i], true, nil
	case "Fn::Split":
		a, err := d.evalList(fn, arg, 2)
		if err != nil {
			return nil, true, err
		}
		var out []any
		for _, s := range strings.Split(fmt.Sprint(a[1]), fmt.Sprint(a[0])) {
			out = append(out, s)
		}
		return out, true, nil
	}
	if strings.HasPrefix(fn, "Fn::") {
		return nil, true, fmt.Errorf("%s is not evaluated by this test", fn)
	}
	return nil, false, nil
}

func (d *deployment) evalList(fn string, arg any, n int) ([]any, error) {
	r, err := d.eval(arg)
	if err != nil {
		return nil, err
	}
	a, ok := r.([]any)
	if !ok || len(a) != n {
		return nil, fmt.Errorf("%s %v: want %d arguments", fn, arg, n)
	}
	return a, nil
}

func (d *deployment) ref(arg any) (any, error) {
	name, _ := arg.(string)
	if name == "AWS::NoValue" {
		return noValue{}, nil
	}
	if v, ok := pseudo[name]; ok {
		return v, nil
	}
	if v, ok := d.params[name]; ok {
		return v, nil
	}
	ok, err := d.resourceExists(name)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("Ref %s: no such parameter or deployed resource", name)
	}
	return map[string]any{"Ref": name}, nil
}

var subVar = regexp.MustCompile(`\$\{([^}]*)\}`)

func (d *deployment) sub(arg any) (string, error) {
	var (
		s      string
		locals map[string]any
	)
	switch a := arg.(type) {
	case string:
		s = a
	case []any:
		if len(a) != 2 {
			return "", fmt.Errorf("Fn::Sub %v: want [string, variables]", arg)
		}
		s, _ = a[0].(string)
		vars, err := d.eval(a[1])
		if err != nil {
			return "", err
		}
		locals = obj(vars)
	default:
		return "", fmt.Errorf("Fn::Sub %v: want a string", arg)
	}
	var firstErr error
	out := subVar.ReplaceAllStringFunc(s, func(m string) string {
		name := m[2 : len(m)-1]
		if strings.HasPrefix(name, "!") {
			return "${" + name[1:] + "}"
		}
		if v, ok := locals[name]; ok {
			return fmt.Sprint(v)
		}
		if res, attr, ok := strings.Cut(name, "."); ok && !strings.HasPrefix(name, "AWS::") {
			if _, _, err := d.intrinsic("Fn::GetAtt", []any{res, attr}); err != nil && firstErr == nil {
				firstErr = err
			}
			return m
		}
		v, err := d.ref(name)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			return m
		}
		if s, ok := v.(string); ok {
			return s
		}
		return m // a resource: its name or ARN is known only when deployed
	})
	return out, firstErr
}

// obj returns v as a mapping, or nil.
func obj(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// at follows keys through nested mappings; nil when one is missing.
func at(v any, keys ...string) any {
	for _, k := range keys {
		v = obj(v)[k]
	}
	return v
}

func TestDeploymentEval(t *testing.T) {
	tpl, err := parseTemplate([]byte(`
Parameters:
  Secret: {Type: String}
  Empty: {Type: String, Default: ""}
Conditions:
  InSsm: !Equals [!Select [0, !Split [":", !Ref Secret]], ssm]
  HasEmpty: !Not [!Equals [!Ref Empty, ""]]
Resources:
  Queue: {Type: AWS::SQS::Queue}
  Topic: {Type: AWS::SNS::Topic, Condition: HasEmpty}
Values:
  arn: !If [InSsm, !Sub ["arn:${AWS::Partition}:ssm:parameter${N}", {N: !Select [1, !Split [":", !Sub "${Secret}:"]]}], none]
  list: [a, !If [HasEmpty, b, !Ref AWS::NoValue], !GetAtt Queue.Arn, !Ref Queue]
  escaped: !Sub "${!Literal}-${AWS::StackName}"
  badselect: !Select [3, !Split [",", "a,b"]]
  absent: !Ref Topic
`))
	if err != nil {
		t.Fatal(err)
	}
	d, err := deploy(tpl, map[string]string{"Secret": "ssm:/a/b"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		key, want string
		wantErr   bool
	}{
		{"arn", "arn:aws:ssm:parameter/a/b", false},
		{"list", "[a Queue.Arn map[Ref:Queue]]", false},
		{"escaped", "${Literal}-hcloud-k8s", false},
		{"badselect", "", true},
		{"absent", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			got, err := d.eval(at(tpl, "Values", tt.key))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got %v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := fmt.Sprint(got); s != tt.want {
				t.Errorf("got %s, want %s", s, tt.want)
			}
		})
	}
	if _, err := deploy(tpl, nil); err == nil {
		t.Error("deploy without the required parameter succeeded")
	}
	if _, err := deploy(tpl, map[string]string{"Secret": "x", "Nope": "y"}); err == nil {
		t.Error("deploy with an unknown parameter succeeded")
	}
	d2, err := deploy(tpl, map[string]string{"Secret": "name", "Empty": "set"})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := d2.eval(at(tpl, "Values", "arn")); got != "none" {
		t.Errorf("arn of a non-SSM secret = %v, want none", got)
	}
}
