// Command kueue-up runs the Kueue manager (sigs.k8s.io/kueue/cmd/kueue, built unchanged from
// the module; see tools.go) against the loopback control plane of ../controlplane:
//
//  1. applies Kueue's CRDs, read from the module's own config/components/crd/bases;
//  2. makes a CA and a serving certificate for 127.0.0.1, and registers Kueue's webhooks
//     (read from config/components/webhook/manifests.yaml) with url https://127.0.0.1:PORT/PATH
//     instead of a Service, keeping only those for Kueue's own types and the frameworks we enable;
//  3. writes a Kueue Configuration (loopback ports, no leader election, no internal cert
//     management) and runs the manager as a child until SIGTERM, then removes the webhooks
//     (they fail closed, so they must not outlive the manager).
//
// Usage: kueue-up --kubeconfig ADMIN --module-dir DIR --manager BIN --state-dir DIR
// (DIR of the module: `go list -m -f '{{.Dir}}' sigs.k8s.io/kueue` in this folder).
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"
)

// Webhooks kept: Kueue's own API group and the job frameworks enabled below.
var keepGroups = map[string]bool{"kueue.x-k8s.io": true, "batch": true, "kubeflow.org": true}

const configTmpl = `apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
health:
  healthProbeBindAddress: 127.0.0.1:%d
metrics:
  bindAddress: "0"
webhook:
  host: 127.0.0.1
  port: %d
  certDir: %s
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
manageJobsWithoutQueueName: false
featureGates:
  VisibilityOnDemand: false
integrations:
  frameworks: ["batch/job", "kubeflow.org/pytorchjob"]
`

var (
	crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	nsGVR  = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	whGVR  = map[string]schema.GroupVersionResource{
		"MutatingWebhookConfiguration":   {Group: "admissionregistration.k8s.io", Version: "v1", Resource: "mutatingwebhookconfigurations"},
		"ValidatingWebhookConfiguration": {Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingwebhookconfigurations"},
	}
	apply = metav1.ApplyOptions{FieldManager: "cpt-tests", Force: true}
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "admin kubeconfig of the control plane")
	moduleDir := flag.String("module-dir", "", "the sigs.k8s.io/kueue module directory")
	manager := flag.String("manager", "", "the Kueue manager binary")
	stateDir := flag.String("state-dir", ".cluster/kueue", "config, certificates, log, ready file")
	flag.Parse()
	if err := run(*kubeconfig, *moduleDir, *manager, *stateDir); err != nil {
		fmt.Fprintln(os.Stderr, "kueue-up:", err)
		os.Exit(1)
	}
}

func run(kubeconfig, moduleDir, manager, stateDir string) error {
	ctx := context.Background()
	dir, _ := filepath.Abs(stateDir)
	certDir := filepath.Join(dir, "certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(dir, "ready"))
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}

	// 1. CRDs, then wait until each is Established.
	crdFiles, _ := filepath.Glob(filepath.Join(moduleDir, "config/components/crd/bases/kueue.x-k8s.io_*.yaml"))
	if len(crdFiles) == 0 {
		return fmt.Errorf("no CRDs under %s/config/components/crd/bases", moduleDir)
	}
	var crdNames []string
	for _, f := range crdFiles {
		objs, err := readObjects(f)
		if err != nil {
			return err
		}
		for _, o := range objs {
			if _, err := dyn.Resource(crdGVR).Apply(ctx, o.GetName(), o, apply); err != nil {
				return fmt.Errorf("apply %s: %w", filepath.Base(f), err)
			}
			crdNames = append(crdNames, o.GetName())
		}
	}
	if err := waitEstablished(ctx, dyn, crdNames, time.Minute); err != nil {
		return err
	}
	ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace",
		"metadata": map[string]any{"name": "kueue-system"}}}
	if _, err := dyn.Resource(nsGVR).Apply(ctx, "kueue-system", ns, apply); err != nil {
		return err
	}

	// 2. Certificates and webhooks on loopback.
	caPEM, err := writeServingCert(certDir)
	if err != nil {
		return err
	}
	ports, err := freePorts(2) // webhook, health
	if err != nil {
		return err
	}
	webhooks, err := readObjects(filepath.Join(moduleDir, "config/components/webhook/manifests.yaml"))
	if err != nil {
		return err
	}
	var registered []*unstructured.Unstructured
	for _, wc := range webhooks {
		wc.SetName("kueue-" + wc.GetName())
		if err := toLoopback(wc, ports[0], caPEM); err != nil {
			return err
		}
		registered = append(registered, wc)
	}

	// Without internal cert management the manager reads a metrics certificate from a fixed
	// path, even with metrics off; it gets a copy of the webhook's (this needs root).
	if err := copyCerts(certDir, "/etc/kueue/metrics/certs"); err != nil {
		return fmt.Errorf("the manager needs /etc/kueue/metrics/certs/tls.{crt,key}: %w", err)
	}

	// 3. The manager, with our configuration.
	confPath := filepath.Join(dir, "config.yaml")
	conf := fmt.Sprintf(configTmpl, ports[1], ports[0], certDir)
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return err
	}
	logFile, err := os.Create(filepath.Join(dir, "manager.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(manager, "--config="+confPath, "--kubeconfig="+kubeconfig)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() { // webhooks out first: they fail closed
		for _, wc := range registered {
			_ = dyn.Resource(whGVR[wc.GetKind()]).Delete(context.Background(), wc.GetName(), metav1.DeleteOptions{})
		}
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				_ = cmd.Process.Kill()
			}
		}
	}()

	// The webhooks go in once the manager serves them, so no request meets a closed port.
	health := fmt.Sprintf("http://127.0.0.1:%d/readyz", ports[1])
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if resp, err := http.Get(health); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-done:
			return fmt.Errorf("manager exited (%v) before ready; see %s", err, logFile.Name())
		case s := <-sig:
			return fmt.Errorf("%v before ready", s)
		case <-time.After(500 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("manager not ready in 3m; see %s", logFile.Name())
		}
	}
	for _, wc := range registered {
		if _, err := dyn.Resource(whGVR[wc.GetKind()]).Apply(ctx, wc.GetName(), wc, apply); err != nil {
			return fmt.Errorf("webhooks %s: %w", wc.GetName(), err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "ready"), []byte("ok\n"), 0o644); err != nil {
		return err
	}
	fmt.Println("kueue ready")
	select {
	case s := <-sig:
		fmt.Printf("kueue-up: %v, stopping\n", s)
		return nil
	case err := <-done:
		return fmt.Errorf("manager exited: %v; see %s", err, logFile.Name())
	}
}

// toLoopback keeps the webhooks for keepGroups and points each at https://127.0.0.1:port/PATH.
func toLoopback(wc *unstructured.Unstructured, port int, caPEM []byte) error {
	hooks, _, _ := unstructured.NestedSlice(wc.Object, "webhooks")
	var kept []any
	for _, h := range hooks {
		hook := h.(map[string]any)
		rules, _, _ := unstructured.NestedSlice(hook, "rules")
		keep := false
		for _, r := range rules {
			groups, _, _ := unstructured.NestedStringSlice(r.(map[string]any), "apiGroups")
			for _, g := range groups {
				keep = keep || keepGroups[g]
			}
		}
		if !keep {
			continue
		}
		path, _, _ := unstructured.NestedString(hook, "clientConfig", "service", "path")
		if path == "" {
			return fmt.Errorf("webhook %v has no service path", hook["name"])
		}
		hook["clientConfig"] = map[string]any{
			"url":      fmt.Sprintf("https://127.0.0.1:%d%s", port, path),
			"caBundle": caPEM, // []byte: encoded as base64 like the API's field
		}
		kept = append(kept, hook)
	}
	// unstructured content must be JSON-compatible: round-trip the bytes through JSON.
	wc.Object["webhooks"] = kept
	b, err := yaml.Marshal(wc.Object)
	if err != nil {
		return err
	}
	wc.Object = map[string]any{}
	return yaml.Unmarshal(b, &wc.Object)
}

func readObjects(path string) ([]*unstructured.Unstructured, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if len(m) > 0 {
			out = append(out, &unstructured.Unstructured{Object: m})
		}
	}
}

func waitEstablished(ctx context.Context, dyn dynamic.Interface, names []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, n := range names {
		for {
			o, err := dyn.Resource(crdGVR).Get(ctx, n, metav1.GetOptions{})
			if err == nil {
				conds, _, _ := unstructured.NestedSlice(o.Object, "status", "conditions")
				ok := false
				for _, c := range conds {
					m := c.(map[string]any)
					ok = ok || (m["type"] == "Established" && m["status"] == "True")
				}
				if ok {
					break
				}
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("CRD %s not Established in %v (last error: %v)", n, timeout, err)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	return nil
}

func freePorts(n int) ([]int, error) {
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// writeServingCert writes tls.crt/tls.key (for 127.0.0.1) signed by a fresh CA; returns the CA PEM.
func writeServingCert(dir string) ([]byte, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kueue-test-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	srv := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kueue-webhook"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, srv, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	return caPEM, nil
}

func copyCerts(from, to string) error {
	if err := os.MkdirAll(to, 0o755); err != nil {
		return err
	}
	for _, f := range []string{"tls.crt", "tls.key"} {
		b, err := os.ReadFile(filepath.Join(from, f))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(to, f), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}
