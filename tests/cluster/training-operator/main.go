// Command training-operator-up runs the Kubeflow training operator (its cmd/training-operator.v1,
// built unchanged from the module; see tools.go), PyTorchJob only, against the loopback control
// plane of ../controlplane:
//
//  1. applies the PyTorchJob CRD, read from the module's manifests/base/crds;
//  2. puts in the operator's webhook Secret a CA and a serving certificate that its cert rotator
//     accepts (names training-operator-ca, training-operator.kubeflow.svc) and that is also valid
//     for 127.0.0.1, and copies them where the operator reads them (a kubelet would mount them);
//  3. registers its PyTorchJob validating webhook (from manifests/base/webhook) with url
//     https://127.0.0.1:PORT/PATH; the rotator injects the CA, as in a real install;
//  4. runs the operator as a child until SIGTERM, then removes the webhook (it fails closed).
//
// Usage: training-operator-up --kubeconfig ADMIN --module-dir DIR --operator BIN --state-dir DIR
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
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

const (
	namespace = "kubeflow"
	vwcName   = "validator.training-operator.kubeflow.org" // the name the operator's rotator injects into
	secret    = "training-operator-webhook-cert"
	certDir   = "/tmp/k8s-webhook-server/serving-certs" // fixed in the operator
)

var (
	crdGVR    = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	nsGVR     = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	secretGVR = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}
	vwcGVR    = schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingwebhookconfigurations"}
	apply     = metav1.ApplyOptions{FieldManager: "cpt-tests", Force: true}
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "admin kubeconfig of the control plane")
	moduleDir := flag.String("module-dir", "", "the github.com/kubeflow/training-operator module directory")
	operator := flag.String("operator", "", "the operator binary")
	stateDir := flag.String("state-dir", ".cluster/training-operator", "log and ready file")
	flag.Parse()
	if err := run(*kubeconfig, *moduleDir, *operator, *stateDir); err != nil {
		fmt.Fprintln(os.Stderr, "training-operator-up:", err)
		os.Exit(1)
	}
}

func run(kubeconfig, moduleDir, operator, stateDir string) error {
	ctx := context.Background()
	dir, _ := filepath.Abs(stateDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
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

	// 1. The CRD.
	crds, err := readObjects(filepath.Join(moduleDir, "manifests/base/crds/kubeflow.org_pytorchjobs.yaml"))
	if err != nil {
		return err
	}
	for _, o := range crds {
		if _, err := dyn.Resource(crdGVR).Apply(ctx, o.GetName(), o, apply); err != nil {
			return fmt.Errorf("apply CRD %s: %w", o.GetName(), err)
		}
		if err := waitEstablished(ctx, dyn, []string{o.GetName()}, time.Minute); err != nil {
			return err
		}
	}
	ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace",
		"metadata": map[string]any{"name": namespace}}}
	if _, err := dyn.Resource(nsGVR).Apply(ctx, namespace, ns, apply); err != nil {
		return err
	}

	// 2. Certificates: in the Secret for the rotator, in certDir for the webhook server.
	files, err := makeCerts()
	if err != nil {
		return err
	}
	data := map[string]any{}
	for k, v := range files {
		data[k] = v // []byte: base64 in JSON, as the API wants
	}
	sec, err := toUnstructured(map[string]any{"apiVersion": "v1", "kind": "Secret",
		"metadata": map[string]any{"name": secret, "namespace": namespace}, "data": data})
	if err != nil {
		return err
	}
	if _, err := dyn.Resource(secretGVR).Namespace(namespace).Apply(ctx, secret, sec, apply); err != nil {
		return err
	}
	if err := os.MkdirAll(certDir, 0o755); err != nil {
		return err
	}
	for _, f := range []string{"tls.crt", "tls.key"} {
		if err := os.WriteFile(filepath.Join(certDir, f), files[f], 0o600); err != nil {
			return err
		}
	}

	// 3. The PyTorchJob webhook, on loopback.
	ports, err := freePorts(2) // webhook, health
	if err != nil {
		return err
	}
	whs, err := readObjects(filepath.Join(moduleDir, "manifests/base/webhook/manifests.yaml"))
	if err != nil || len(whs) != 1 {
		return fmt.Errorf("webhook manifests: %v (%d objects)", err, len(whs))
	}
	vwc := whs[0]
	vwc.SetName(vwcName)
	hooks, _, _ := unstructured.NestedSlice(vwc.Object, "webhooks")
	var kept []any
	for _, h := range hooks {
		hook := h.(map[string]any)
		path, _, _ := unstructured.NestedString(hook, "clientConfig", "service", "path")
		if path == "/validate-kubeflow-org-v1-pytorchjob" {
			hook["clientConfig"] = map[string]any{"url": fmt.Sprintf("https://127.0.0.1:%d%s", ports[0], path)}
			kept = append(kept, hook)
		}
	}
	if len(kept) != 1 {
		return errors.New("no PyTorchJob webhook in manifests/base/webhook/manifests.yaml")
	}
	vwc.Object["webhooks"] = kept
	if _, err := dyn.Resource(vwcGVR).Apply(ctx, vwcName, vwc, apply); err != nil {
		return err
	}

	// 4. The operator.
	logFile, err := os.Create(filepath.Join(dir, "operator.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(operator, "--enable-scheme=pytorchjob", "--kubeconfig="+kubeconfig,
		fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", ports[1]), "--metrics-bind-address=0",
		fmt.Sprintf("--webhook-server-port=%d", ports[0]), "--leader-elect=false")
	// No KUBEFLOW_NAMESPACE: it would limit the operator to that namespace. Its cert rotator
	// uses "kubeflow" when it runs outside a Pod.
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		_ = dyn.Resource(vwcGVR).Delete(context.Background(), vwcName, metav1.DeleteOptions{})
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				_ = cmd.Process.Kill()
			}
		}
	}()
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
			return fmt.Errorf("operator exited (%v) before ready; see %s", err, logFile.Name())
		case s := <-sig:
			return fmt.Errorf("%v before ready", s)
		case <-time.After(500 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("operator not ready in 3m; see %s", logFile.Name())
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "ready"), []byte("ok\n"), 0o644); err != nil {
		return err
	}
	fmt.Println("training-operator ready")
	select {
	case s := <-sig:
		fmt.Printf("training-operator-up: %v, stopping\n", s)
		return nil
	case err := <-done:
		return fmt.Errorf("operator exited: %v; see %s", err, logFile.Name())
	}
}

// makeCerts: ca.crt/ca.key (RSA, PKCS#1, named training-operator-ca, as the rotator checks) and
// tls.crt/tls.key for training-operator.kubeflow.svc and 127.0.0.1.
func makeCerts() (map[string][]byte, error) {
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "training-operator-ca"},
		DNSNames: []string{"training-operator-ca"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	srv := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "training-operator.kubeflow.svc"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"training-operator.kubeflow.svc"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, srv, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	p := func(t string, b []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: t, Bytes: b}) }
	return map[string][]byte{
		"ca.crt": p("CERTIFICATE", caDER), "ca.key": p("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(caKey)),
		"tls.crt": p("CERTIFICATE", der), "tls.key": p("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key)),
	}, nil
}

// toUnstructured round-trips through JSON, so that []byte becomes base64 text.
func toUnstructured(m map[string]any) (*unstructured.Unstructured, error) {
	b, err := yaml.Marshal(m)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{Object: map[string]any{}}
	return u, yaml.Unmarshal(b, &u.Object)
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
