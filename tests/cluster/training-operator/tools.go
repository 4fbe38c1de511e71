//go:build tools

// Keeps the operator's main package in this module's graph, so that
// `go build github.com/kubeflow/training-operator/cmd/training-operator.v1` uses the versions pinned here.
package main

import _ "github.com/kubeflow/training-operator/cmd/training-operator.v1"
