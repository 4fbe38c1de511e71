//go:build tools

// Keeps the Kueue manager's package in this module's graph, so that
// `go build sigs.k8s.io/kueue/cmd/kueue` builds it with the versions pinned here.
package main

import _ "sigs.k8s.io/kueue/cmd/kueue"
