// Command controlplane runs a real, small Kubernetes control plane on loopback for the tests:
// an embedded etcd, kube-apiserver (RBAC on, static tokens for a few identities) and
// kube-controller-manager (garbage collector, namespace, job, service accounts, ...).
// There is no scheduler and no kubelet: Pods are created but never run.
//
// Usage:
//
//	controlplane [--state-dir DIR] [--ready-timeout 5m] [--exit-with-parent]
//	    start everything; writes DIR/{admin,operator,tenant-a,tenant-b}.kubeconfig, DIR/pid,
//	    and DIR/ready (the server URL) once /readyz and the controller-manager's /healthz are ok
//	controlplane controller-manager ARGS  (internal) the controller-manager, started by the above
//
// Build it with the version ldflags of the Makefile's cluster-build (tests/support/real_cluster.py
// does the same): without them the apiserver reports v0.0.0-master, which Kueue refuses.
//
// It stops cleanly on SIGTERM/SIGINT. Every start is fresh: the etcd data, the certificates and
// the tokens of a previous run are replaced.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

// The identities of the static token file: name, groups. admin is cluster-admin through
// system:masters; the others have no rights until a test grants them some.
var identities = []struct{ name, user, groups string }{
	{"admin", "admin", "system:masters"},
	{"operator", "system:serviceaccount:cpt-system:cpt-operator",
		"system:serviceaccounts,system:serviceaccounts:cpt-system,system:authenticated"},
	{"tenant-a", "tenant-a", "system:authenticated"},
	{"tenant-b", "tenant-b", "system:authenticated"},
}

// The controllers we run; enough for ownership, namespaces, Jobs and workload controllers.
const controllers = "garbage-collector-controller,namespace-controller,job-controller,cronjob-controller," +
	"ttl-after-finished-controller,serviceaccount-controller,serviceaccount-token-controller," +
	"root-ca-certificate-publisher-controller,replicaset-controller,deployment-controller," +
	"statefulset-controller,resourcequota-controller,pod-garbage-collector-controller," +
	"clusterrole-aggregation-controller,disruption-controller,endpointslice-controller"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "controller-manager" {
		cmd := controllermanager.NewControllerManagerCommand()
		cmd.SetArgs(os.Args[2:])
		os.Exit(cli.Run(cmd))
	}
	stateDir := flag.String("state-dir", ".cluster", "where kubeconfigs, certificates, etcd data and logs go")
	timeout := flag.Duration("ready-timeout", 5*time.Minute, "give up if not ready by then")
	watchParent := flag.Bool("exit-with-parent", false, "stop (as on SIGTERM) when the process that started us exits")
	flag.Parse()
	if *watchParent {
		go exitWithParent()
	}
	if err := run(*stateDir, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "controlplane:", err)
		os.Exit(1)
	}
}

func run(stateDir string, readyTimeout time.Duration) error {
	dir, err := filepath.Abs(stateDir)
	if err != nil {
		return err
	}
	if err := refuseIfRunning(dir); err != nil {
		return err
	}
	// Fresh state; bin/ (the build) and logs are kept.
	for _, p := range []string{"etcd", "pki", "kcm", "ready"} {
		_ = os.RemoveAll(filepath.Join(dir, p))
	}
	pki := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return err
	}
	pidFile := filepath.Join(dir, "pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	defer os.Remove(pidFile)
	defer os.Remove(filepath.Join(dir, "ready"))

	ports, err := freePorts(4) // etcd client, etcd peer, apiserver, controller-manager
	if err != nil {
		return err
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", ports[2])

	// Certificates: one CA signs the apiserver's serving cert; a separate key signs SA tokens.
	caPEM, err := writePKI(pki)
	if err != nil {
		return err
	}
	tokens, err := writeTokens(filepath.Join(pki, "tokens.csv"))
	if err != nil {
		return err
	}
	for _, id := range identities {
		if err := writeKubeconfig(filepath.Join(dir, id.name+".kubeconfig"), server, caPEM, id.name, tokens[id.name]); err != nil {
			return err
		}
	}

	// etcd, embedded, on loopback only; its data goes when we do.
	defer os.RemoveAll(filepath.Join(dir, "etcd"))
	etcd, err := startEtcd(filepath.Join(dir, "etcd"), ports[0], ports[1])
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer etcd.Close()

	// The apiserver runs in this process; its command installs the SIGTERM handler and
	// returns once it has shut down.
	apiErr := make(chan int, 1)
	go func() {
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs([]string{
			"--etcd-servers=" + etcd.Clients[0].Addr().String(),
			"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(ports[2]),
			"--cert-dir=" + filepath.Join(pki, "apiserver"),
			"--tls-cert-file=" + filepath.Join(pki, "serving.crt"),
			"--tls-private-key-file=" + filepath.Join(pki, "serving.key"),
			"--client-ca-file=" + filepath.Join(pki, "ca.crt"),
			"--token-auth-file=" + filepath.Join(pki, "tokens.csv"),
			"--authorization-mode=Node,RBAC",
			"--service-account-issuer=" + server,
			"--service-account-key-file=" + filepath.Join(pki, "sa.pub"),
			"--service-account-signing-key-file=" + filepath.Join(pki, "sa.key"),
			// An allocation range only: nothing routes to it and nothing connects to it.
			"--service-cluster-ip-range=10.0.0.0/24",
			// The endpoints of the "kubernetes" Service may not be loopback addresses.
			"--endpoint-reconciler-type=none",
			"--profiling=false",
			"--shutdown-delay-duration=0s",
			"--v=0",
		})
		apiErr <- cli.Run(cmd)
	}()

	// Signals for us: forward to the controller-manager; the apiserver has its own handler.
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)

	client := httpClient(caPEM)
	deadline := time.After(readyTimeout)
	if err := waitOK(client, server+"/readyz", tokens["admin"], deadline, apiErr, sig); err != nil {
		return fmt.Errorf("apiserver: %w", err)
	}

	// The controller-manager: this same binary in its second mode, a child process that
	// dies with us (Pdeathsig).
	kcmArgs := []string{"controller-manager",
		"--kubeconfig=" + filepath.Join(dir, "admin.kubeconfig"),
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(ports[3]),
		"--cert-dir=" + filepath.Join(dir, "kcm"),
		"--leader-elect=false",
		"--controllers=" + controllers,
		"--service-account-private-key-file=" + filepath.Join(pki, "sa.key"),
		"--root-ca-file=" + filepath.Join(pki, "ca.crt"),
		"--v=0",
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	kcmLog, err := os.Create(filepath.Join(dir, "controller-manager.log"))
	if err != nil {
		return err
	}
	defer kcmLog.Close()
	kcm := exec.Command(self, kcmArgs...)
	kcm.Stdout, kcm.Stderr = kcmLog, kcmLog
	kcm.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := kcm.Start(); err != nil {
		return err
	}
	kcmDone := make(chan int, 1)
	go func() { _ = kcm.Wait(); kcmDone <- kcm.ProcessState.ExitCode() }()
	stopKCM := func() {
		if kcm.ProcessState == nil {
			_ = kcm.Process.Signal(syscall.SIGTERM)
			select {
			case <-kcmDone:
			case <-time.After(10 * time.Second):
				_ = kcm.Process.Kill()
			}
		}
	}
	defer stopKCM()

	kcmHealth := fmt.Sprintf("https://127.0.0.1:%d/healthz", ports[3])
	kcmClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		// Its serving cert is self-signed in kcm/; we only ask it whether it is up.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if err := waitOK(kcmClient, kcmHealth, "", deadline, kcmDone, sig); err != nil {
		return fmt.Errorf("controller-manager (see %s): %w", kcmLog.Name(), err)
	}

	if err := os.WriteFile(filepath.Join(dir, "ready"), []byte(server+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Printf("controlplane ready: %s (kubeconfigs in %s)\n", server, dir)

	select {
	case s := <-sig:
		fmt.Printf("controlplane: %v, stopping\n", s)
		stopKCM()
		// The apiserver saw the signal too and is shutting down.
		select {
		case <-apiErr:
		case <-time.After(30 * time.Second):
		}
		return nil
	case code := <-apiErr:
		return fmt.Errorf("apiserver exited with code %d", code)
	case code := <-kcmDone:
		return fmt.Errorf("controller-manager exited with code %d (see %s)", code, kcmLog.Name())
	}
}

// exitWithParent sends us SIGTERM once our parent is gone (we are reparented), so a test
// run that dies cannot leave a control plane behind.
func exitWithParent() {
	parent := os.Getppid()
	for range time.Tick(time.Second) {
		if os.Getppid() != parent {
			_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
			return
		}
	}
}

// refuseIfRunning fails if the pid file names a live process: one control plane per state dir.
func refuseIfRunning(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "pid"))
	if err != nil {
		return nil
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return nil
	}
	if syscall.Kill(pid, 0) == nil {
		return fmt.Errorf("already running as pid %d (state dir %s)", pid, dir)
	}
	return nil
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func startEtcd(dataDir string, clientPort, peerPort int) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "default"
	cfg.Dir = dataDir
	cu, _ := parseURL(fmt.Sprintf("http://127.0.0.1:%d", clientPort))
	pu, _ := parseURL(fmt.Sprintf("http://127.0.0.1:%d", peerPort))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = cu, cu
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = pu, pu
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(filepath.Dir(dataDir), "etcd.log")}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("not ready after 60s")
	}
}

// waitOK polls url until it answers 200, the deadline passes, the component exits or we are signalled.
func waitOK(c *http.Client, url, token string, deadline <-chan time.Time, exited <-chan int, sig <-chan os.Signal) error {
	for {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-deadline:
			return fmt.Errorf("%s not ok before the deadline", url)
		case code := <-exited:
			return fmt.Errorf("exited with code %d before %s was ok", code, url)
		case s := <-sig:
			return fmt.Errorf("%v while waiting for %s", s, url)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func httpClient(caPEM []byte) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// writePKI writes ca.crt, serving.crt/key (for 127.0.0.1 and localhost) and sa.key/pub; returns the CA PEM.
func writePKI(dir string) ([]byte, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cpt-test-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caPEM := pemBlock("CERTIFICATE", caDER)
	files := map[string][]byte{
		"ca.crt":      caPEM,
		"serving.crt": pemBlock("CERTIFICATE", srvDER),
		"serving.key": ecKeyPEM(srvKey),
		"sa.key":      ecKeyPEM(saKey),
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	files["sa.pub"] = pemBlock("PUBLIC KEY", saPub)
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return nil, err
		}
	}
	return caPEM, nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func ecKeyPEM(k *ecdsa.PrivateKey) []byte {
	der, _ := x509.MarshalECPrivateKey(k)
	return pemBlock("EC PRIVATE KEY", der)
}

// writeTokens writes the static token file (token,user,uid,"groups") with a random token each.
func writeTokens(path string) (map[string]string, error) {
	tokens := map[string]string{}
	var b strings.Builder
	for _, id := range identities {
		raw := make([]byte, 24)
		if _, err := rand.Read(raw); err != nil {
			return nil, err
		}
		t := hex.EncodeToString(raw)
		tokens[id.name] = t
		fmt.Fprintf(&b, "%s,%s,%s,\"%s\"\n", t, id.user, id.user, id.groups)
	}
	return tokens, os.WriteFile(path, []byte(b.String()), 0o600)
}

func writeKubeconfig(path, server string, caPEM []byte, user, token string) error {
	// JSON is YAML; the CA is inlined so the file stands alone.
	ca := fmt.Sprintf("%q", b64(caPEM))
	s := `{"apiVersion": "v1", "kind": "Config",
 "clusters": [{"name": "cpt-test", "cluster": {"server": "` + server + `", "certificate-authority-data": ` + ca + `}}],
 "users": [{"name": "` + user + `", "user": {"token": "` + token + `"}}],
 "contexts": [{"name": "` + user + `", "context": {"cluster": "cpt-test", "user": "` + user + `", "namespace": "default"}}],
 "current-context": "` + user + `"}
`
	return os.WriteFile(path, []byte(s), 0o600)
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func parseURL(s string) ([]url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, err
	}
	return []url.URL{*u}, nil
}
