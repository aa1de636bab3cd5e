// Package secret reads the tokens the functions need from where AWS keeps
// secrets: Secrets Manager, or an SSM Parameter Store SecureString. The
// value never reaches a log or an error message.
package secret

import (
	"context"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
)

// SSMPrefix marks a reference to an SSM parameter: "ssm:/hcloud-k8s/token".
// Anything else is a Secrets Manager secret id (name or ARN).
const SSMPrefix = "ssm:"

// SecretsManager is the part of the Secrets Manager client used here.
type SecretsManager interface {
	GetSecretValue(ctx context.Context, in *secretsmanager.GetSecretValueInput, opts ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error)
}

// ParameterStore is the part of the SSM client used here.
type ParameterStore interface {
	GetParameter(ctx context.Context, in *ssm.GetParameterInput, opts ...func(*ssm.Options)) (*ssm.GetParameterOutput, error)
}

// Reader reads secrets.
type Reader struct {
	SecretsManager SecretsManager
	ParameterStore ParameterStore
}

// NewReader returns a Reader with clients configured from the environment
// (region, credentials, AWS_ENDPOINT_URL_SECRETS_MANAGER / _SSM).
func NewReader(ctx context.Context) (*Reader, error) {
	cfg, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration: %w", err)
	}
	return &Reader{SecretsManager: secretsmanager.NewFromConfig(cfg), ParameterStore: ssm.NewFromConfig(cfg)}, nil
}

// Read returns the secret ref points at, with surrounding whitespace
// removed (a token pasted with a newline).
func (r *Reader) Read(ctx context.Context, ref string) (string, error) {
	var value string
	if name, ok := strings.CutPrefix(ref, SSMPrefix); ok {
		out, err := r.ParameterStore.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String(name), WithDecryption: aws.Bool(true)})
		if err != nil {
			return "", fmt.Errorf("read SSM parameter %s: %w", name, err)
		}
		if out.Parameter != nil {
			value = aws.ToString(out.Parameter.Value)
		}
	} else {
		out, err := r.SecretsManager.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(ref)})
		if err != nil {
			return "", fmt.Errorf("read secret %s: %w", ref, err)
		}
		value = aws.ToString(out.SecretString)
	}
	value = strings.TrimSpace(value)
	if value == "" {
		return "", fmt.Errorf("secret %s is empty", ref)
	}
	return value, nil
}
