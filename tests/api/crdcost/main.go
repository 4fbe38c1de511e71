// crdcost asks the API server's own code what it thinks of our CRDs, without a server:
// it runs apiextensions-apiserver's ValidateCustomResourceDefinition (the check behind
// `kubectl apply` of a CRD, CEL cost limits included) and reports, for every
// x-kubernetes-validations rule, the estimated cost the server charges it (the rule's
// worst-case cost times the worst-case number of times it runs).
//
// Usage: crdcost FILE.yaml...   Prints one JSON object per CRD on stdout.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apimachinery/pkg/runtime"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"k8s.io/apiserver/pkg/cel/environment"
	"sigs.k8s.io/yaml"
)

type ruleCost struct {
	Path        string `json:"path"`
	Rule        string `json:"rule"`
	Cost        uint64 `json:"cost"`
	MaxCost     uint64 `json:"maxCost"`
	Cardinality uint64 `json:"cardinality"` // 0: unbounded (the compiler's own bound applies)
	Error       string `json:"error,omitempty"`
}

type report struct {
	File             string     `json:"file"`
	Name             string     `json:"name"`
	Errors           []string   `json:"errors"`
	Rules            []ruleCost `json:"rules"`
	TotalCost        uint64     `json:"totalCost"`
	RuleCostLimit    uint64     `json:"ruleCostLimit"`
	CRDCostLimit     uint64     `json:"crdCostLimit"`
	PerCallCostLimit uint64     `json:"perCallCostLimit"`
}

func mul(a, b uint64) uint64 {
	if a != 0 && b > ^uint64(0)/a {
		return ^uint64(0)
	}
	return a * b
}

// walk visits the schema as the server's validation does and costs every rule it finds.
func walk(s *apiextensions.JSONSchemaProps, ctx *validation.CELSchemaContext, path string, envSet *environment.EnvSet, out *[]ruleCost) {
	if len(s.XValidations) > 0 {
		info, err := ctx.TypeInfo()
		if err != nil || info == nil {
			*out = append(*out, ruleCost{Path: path, Error: fmt.Sprintf("no type information: %v", err)})
		} else {
			results, err := cel.Compile(info.Schema, info.DeclType, celconfig.PerCallLimit, envSet, cel.NewExpressionsEnvLoader())
			if err != nil {
				*out = append(*out, ruleCost{Path: path, Error: err.Error()})
			}
			for i, r := range results {
				rc := ruleCost{Path: path, Rule: s.XValidations[i].Rule, MaxCost: r.MaxCost}
				if ctx.MaxCardinality != nil {
					rc.Cardinality = *ctx.MaxCardinality
					rc.Cost = mul(r.MaxCost, *ctx.MaxCardinality)
				} else {
					rc.Cost = mul(r.MaxCost, r.MaxCardinality)
				}
				if r.Error != nil {
					rc.Error = r.Error.Detail
				}
				*out = append(*out, rc)
			}
		}
	}
	names := make([]string, 0, len(s.Properties))
	for n := range s.Properties {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := s.Properties[n]
		walk(&p, ctx.ChildPropertyContext(&p, n), path+"."+n, envSet, out)
	}
	if s.Items != nil && s.Items.Schema != nil {
		walk(s.Items.Schema, ctx.ChildItemsContext(s.Items.Schema), path+"[*]", envSet, out)
	}
	if s.AdditionalProperties != nil && s.AdditionalProperties.Schema != nil {
		ap := s.AdditionalProperties.Schema
		walk(ap, ctx.ChildAdditionalPropertiesContext(ap), path+"{*}", envSet, out)
	}
}

func check(file string) (report, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return report{}, err
	}
	var v1 apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(raw, &v1); err != nil {
		return report{}, fmt.Errorf("%s: %w", file, err)
	}
	apiextensionsv1.SetObjectDefaults_CustomResourceDefinition(&v1) // as the server defaults before it validates
	var crd apiextensions.CustomResourceDefinition
	scheme := runtime.NewScheme()
	if err := apiextensionsv1.AddToScheme(scheme); err != nil {
		return report{}, err
	}
	if err := apiextensions.AddToScheme(scheme); err != nil {
		return report{}, err
	}
	if err := scheme.Convert(&v1, &crd, nil); err != nil {
		return report{}, fmt.Errorf("%s: %w", file, err)
	}
	rep := report{
		File: file, Name: crd.Name, Errors: []string{}, Rules: []ruleCost{},
		RuleCostLimit: validation.StaticEstimatedCostLimit, CRDCostLimit: validation.StaticEstimatedCRDCostLimit,
		PerCallCostLimit: celconfig.PerCallLimit,
	}
	for _, e := range validation.ValidateCustomResourceDefinition(context.Background(), &crd) {
		rep.Errors = append(rep.Errors, e.Error())
	}
	envSet := environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion())
	for _, version := range crd.Spec.Versions {
		if version.Schema == nil || version.Schema.OpenAPIV3Schema == nil {
			continue
		}
		root := version.Schema.OpenAPIV3Schema
		walk(root, validation.RootCELContext(root), version.Name, envSet, &rep.Rules)
	}
	if crd.Spec.Validation != nil && crd.Spec.Validation.OpenAPIV3Schema != nil {
		root := crd.Spec.Validation.OpenAPIV3Schema
		walk(root, validation.RootCELContext(root), "spec.validation", envSet, &rep.Rules)
	}
	for _, r := range rep.Rules {
		rep.TotalCost = mul(1, rep.TotalCost) + r.Cost
		if rep.TotalCost < r.Cost { // overflow
			rep.TotalCost = ^uint64(0)
		}
	}
	return rep, nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: crdcost FILE.yaml...")
		os.Exit(2)
	}
	enc := json.NewEncoder(os.Stdout)
	for _, f := range os.Args[1:] {
		rep, err := check(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, "crdcost:", err)
			os.Exit(2)
		}
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(os.Stderr, "crdcost:", err)
			os.Exit(2)
		}
	}
}
