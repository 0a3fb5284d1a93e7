// Command validate checks Kubernetes manifests strictly against the API types of
// k8s.io/api: every document must be a known kind, and every field must exist there with
// the right type (unknown or misspelled fields fail, as with `kubectl apply
// --validate=strict`). It also checks what edgeq's manifest promises: native gRPC probes
// and a PodDisruptionBudget. Usage: go run . FILE...
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

func newObject(tm typeMeta) (any, error) {
	switch tm.APIVersion + "/" + tm.Kind {
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1/Secret":
		return &corev1.Secret{}, nil
	case "v1/Service":
		return &corev1.Service{}, nil
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}, nil
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, nil
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	}
	return nil, fmt.Errorf("unknown kind %s %s", tm.APIVersion, tm.Kind)
}

func checkFile(path string) (map[string]any, int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	objects := map[string]any{}
	count := 0
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for i := 0; ; i++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, 0, fmt.Errorf("%s: document %d: %w", path, i, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 || string(bytes.TrimSpace(doc)) == "---" {
			continue
		}
		var fields map[string]any
		if err := yaml.Unmarshal(doc, &fields); err != nil {
			return nil, 0, fmt.Errorf("%s: document %d: %w", path, i, err)
		}
		if len(fields) == 0 { // only comments
			continue
		}
		var tm typeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, 0, fmt.Errorf("%s: document %d: %w", path, i, err)
		}
		obj, err := newObject(tm)
		if err != nil {
			return nil, 0, fmt.Errorf("%s: document %d: %w", path, i, err)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			return nil, 0, fmt.Errorf("%s: document %d (%s): %w", path, i, tm.Kind, err)
		}
		objects[tm.Kind] = obj
		count++
	}
	return objects, count, nil
}

// edgeqPromises: the StatefulSet's container has native gRPC liveness and readiness
// probes, and a PodDisruptionBudget covers the pods.
func edgeqPromises(objects map[string]any) error {
	sts, ok := objects["StatefulSet"].(*appsv1.StatefulSet)
	if !ok {
		return errors.New("no StatefulSet")
	}
	for _, c := range sts.Spec.Template.Spec.Containers {
		if c.LivenessProbe == nil || c.LivenessProbe.GRPC == nil || c.ReadinessProbe == nil || c.ReadinessProbe.GRPC == nil {
			return fmt.Errorf("container %s: liveness and readiness must be native gRPC probes", c.Name)
		}
	}
	if _, ok := objects["PodDisruptionBudget"]; !ok {
		return errors.New("no PodDisruptionBudget")
	}
	return nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: validate FILE...")
		os.Exit(2)
	}
	failed := false
	for _, path := range os.Args[1:] {
		objects, count, err := checkFile(path)
		if err == nil {
			err = edgeqPromises(objects)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "invalid:", err)
			failed = true
			continue
		}
		fmt.Printf("%s: %d objects valid\n", path, count)
	}
	if failed {
		os.Exit(1)
	}
}
