// auditclient drives an audit webhook with the Kubernetes API server's own audit client: the
// k8s.io/apiserver webhook backend wrapped in the buffered backend, with kube-apiserver's default
// --audit-webhook-batch-* settings, configured by a kubeconfig read by the same loader
// --audit-webhook-config-file uses. The sealtrail integration tests run it against `sealtrail run`.
//
// Modes:
//
//	auditclient send  --kubeconfig FILE --events FILE.jsonl --sent FILE.jsonl
//	auditclient check [--kubeconfig FILE] [--policy FILE]
//
// send reads one audit.k8s.io/v1 Event per line, hands each to the backend (ProcessEvents, as the
// API server does once per request), waits until the buffered backend has passed every event to
// the webhook backend, shuts it down (which waits for every in-flight batch, retries included) and
// prints a JSON summary on stdout. --sent receives, one per line, the exact bytes of each event as
// it appears inside the EventList bodies the client sends. While running, one JSON line per batch
// goes to stderr ({"batch": n, "events": k}) so a test can act while batches are in flight.
//
// check loads a kubeconfig exactly as the API server does for its audit webhook, and an audit
// policy as --audit-policy-file does (exit 0, or exit 1 with the loader's error).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	auditinternal "k8s.io/apiserver/pkg/apis/audit"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	"k8s.io/apiserver/pkg/audit"
	"k8s.io/apiserver/pkg/audit/policy"
	"k8s.io/apiserver/pkg/util/webhook"
	pluginbuffered "k8s.io/apiserver/plugin/pkg/audit/buffered"
	pluginwebhook "k8s.io/apiserver/plugin/pkg/audit/webhook"
	"k8s.io/klog/v2"
)

// defaultBatchConfig is kube-apiserver's default for the webhook backend: the values of
// defaultWebhookBatchConfig() in k8s.io/apiserver/pkg/server/options/audit.go (that package is
// not imported: it pulls the whole generic API server into the build).
func defaultBatchConfig() pluginbuffered.BatchConfig {
	return pluginbuffered.BatchConfig{
		BufferSize:     10000,
		MaxBatchSize:   400,
		MaxBatchWait:   30 * time.Second,
		ThrottleEnable: true,
		ThrottleQPS:    10,
		ThrottleBurst:  15,
		AsyncDelegate:  true,
	}
}

// The API server's --audit-webhook-version default.
var groupVersion = auditv1.SchemeGroupVersion

type pluginError struct {
	Message  string   `json:"message"`
	Events   int      `json:"events"`
	AuditIDs []string `json:"audit_ids"`
}

type summary struct {
	HandedOver    int           `json:"handed_over"`
	Batches       []int         `json:"batches"`
	BatchesFailed int           `json:"batches_failed"`
	Errors        []pluginError `json:"errors"`
	Logged        []string      `json:"logged_errors"`
	Seconds       float64       `json:"seconds"`
}

// errorSink collects what the audit plugins report through klog (audit.HandlePluginError logs
// every dropped batch with the IDs of its events, and counts it in a metric).
type errorSink struct {
	mu     sync.Mutex
	errors []pluginError
	logged []string
}

var affecting = regexp.MustCompile(`Error in audit plugin '([^']*)' affecting (\d+) audit events: (.*)`)
var eventID = regexp.MustCompile(`AUDIT: id="([^"]*)"`)

func (s *errorSink) record(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	lines := strings.Split(msg, "\n")
	m := affecting.FindStringSubmatch(lines[0])
	if m == nil {
		s.logged = append(s.logged, msg)
		return
	}
	n, _ := strconv.Atoi(m[2])
	pe := pluginError{Message: m[1] + ": " + m[3], Events: n, AuditIDs: []string{}}
	for _, line := range lines[1:] {
		if id := eventID.FindStringSubmatch(line); id != nil {
			pe.AuditIDs = append(pe.AuditIDs, id[1])
		}
	}
	s.errors = append(s.errors, pe)
}

// refused counts the events the buffered backend itself dropped (its buffer was full or shut).
func (s *errorSink) refused() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, e := range s.errors {
		if strings.HasPrefix(e.Message, pluginbuffered.PluginName+": ") {
			n += e.Events
		}
	}
	return n
}

// observer sits between the buffered backend and the webhook backend: it only counts the batches
// the buffered backend forms (and reports them on stderr) and passes them on unchanged.
type observer struct {
	delegate  audit.Backend
	mu        sync.Mutex
	batches   []int
	failed    int
	delivered int
}

func (o *observer) passedOn() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.delivered
}

func (o *observer) Run(stopCh <-chan struct{}) error { return o.delegate.Run(stopCh) }
func (o *observer) Shutdown()                        { o.delegate.Shutdown() }
func (o *observer) String() string                   { return o.delegate.String() }

func (o *observer) ProcessEvents(ev ...*auditinternal.Event) bool {
	o.mu.Lock()
	o.batches = append(o.batches, len(ev))
	n := len(o.batches)
	o.delivered += len(ev)
	o.mu.Unlock()
	line, _ := json.Marshal(map[string]int{"batch": n, "events": len(ev)})
	fmt.Fprintln(os.Stderr, string(line))
	ok := o.delegate.ProcessEvents(ev...)
	if !ok {
		o.mu.Lock()
		o.failed++
		o.mu.Unlock()
	}
	return ok
}

// errorLogSink is klog's backend here: errors are collected for the summary, the rest dropped.
type errorLogSink struct{ sink *errorSink }

func (l errorLogSink) Init(logr.RuntimeInfo)          {}
func (l errorLogSink) Enabled(int) bool               { return false }
func (l errorLogSink) Info(int, string, ...any)       {}
func (l errorLogSink) WithValues(...any) logr.LogSink { return l }
func (l errorLogSink) WithName(string) logr.LogSink   { return l }
func (l errorLogSink) Error(err error, msg string, _ ...any) {
	if err != nil {
		msg = msg + ": " + err.Error()
	}
	l.sink.record(msg)
}

func errorLogger(sink *errorSink) logr.Logger { return logr.New(errorLogSink{sink}) }

func readEvents(path string) ([]*auditinternal.Event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	decoder := audit.Codecs.UniversalDecoder(auditinternal.SchemeGroupVersion)
	defaults := groupVersion.WithKind("Event")
	var events []*auditinternal.Event
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 1<<20), 256<<20)
	for line := 1; scanner.Scan(); line++ {
		data := bytes.TrimSpace(scanner.Bytes())
		if len(data) == 0 {
			continue
		}
		ev := &auditinternal.Event{}
		if _, _, err := decoder.Decode(data, &defaults, ev); err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, line, err)
		}
		events = append(events, ev)
	}
	return events, scanner.Err()
}

// wireBytes returns each event's bytes as they appear in the EventList the webhook backend
// posts: the backend encodes the list with this codec (NewGenericWebhook), and encoding/json
// writes a list's items independently of each other, so a one-item list shows an item's bytes.
func wireBytes(events []*auditinternal.Event) ([][]byte, error) {
	codec := audit.Codecs.LegacyCodec(groupVersion)
	out := make([][]byte, 0, len(events))
	for _, ev := range events {
		list := &auditinternal.EventList{Items: []auditinternal.Event{*ev}}
		body, err := runtime.Encode(codec, list)
		if err != nil {
			return nil, err
		}
		var parsed struct {
			Items []json.RawMessage `json:"items"`
		}
		if err := json.Unmarshal(body, &parsed); err != nil {
			return nil, err
		}
		if len(parsed.Items) != 1 {
			return nil, errors.New("encoded EventList does not hold exactly one item")
		}
		out = append(out, parsed.Items[0])
	}
	return out, nil
}

func send(args []string) error {
	fs := flag.NewFlagSet("send", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig, as --audit-webhook-config-file takes it")
	eventsPath := fs.String("events", "", "audit.k8s.io/v1 Events, one JSON object per line")
	sentPath := fs.String("sent", "", "write each event's exact bytes as sent, one per line")
	initialBackoff := fs.Duration("initial-backoff", pluginwebhook.DefaultInitialBackoffDelay,
		"--audit-webhook-initial-backoff (kube-apiserver default)")
	_ = fs.Parse(args)
	if *kubeconfig == "" || *eventsPath == "" {
		return errors.New("send needs --kubeconfig and --events")
	}

	sink := &errorSink{}
	klog.SetLogger(errorLogger(sink))

	events, err := readEvents(*eventsPath)
	if err != nil {
		return err
	}
	if *sentPath != "" {
		wire, err := wireBytes(events)
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		for _, b := range wire {
			buf.Write(b)
			buf.WriteByte('\n')
		}
		if err := os.WriteFile(*sentPath, buf.Bytes(), 0o600); err != nil {
			return err
		}
	}

	start := time.Now()
	delegate, err := pluginwebhook.NewBackend(*kubeconfig, groupVersion,
		webhook.DefaultRetryBackoffWithInitialDelay(*initialBackoff), nil)
	if err != nil {
		return fmt.Errorf("initializing audit webhook: %w", err)
	}
	obs := &observer{delegate: delegate}
	backend := pluginbuffered.NewBackend(obs, defaultBatchConfig())
	stopCh := make(chan struct{})
	if err := backend.Run(stopCh); err != nil {
		return err
	}
	for _, ev := range events {
		backend.ProcessEvents(ev)
	}
	// Stopping at once would race the batching loop (it ends a batch when stopCh closes); wait
	// until the buffered backend has formed every batch as it would on a running API server
	// (events its full buffer refused are reported as errors and never reach a batch).
	for obs.passedOn()+sink.refused() < len(events) {
		time.Sleep(10 * time.Millisecond)
	}
	close(stopCh)
	backend.Shutdown()

	obs.mu.Lock()
	sink.mu.Lock()
	result := summary{
		HandedOver:    len(events),
		Batches:       obs.batches,
		BatchesFailed: obs.failed,
		Errors:        append([]pluginError{}, sink.errors...),
		Logged:        append([]string{}, sink.logged...),
		Seconds:       time.Since(start).Seconds(),
	}
	sink.mu.Unlock()
	obs.mu.Unlock()
	out, _ := json.Marshal(result)
	fmt.Println(string(out))
	return nil
}

func check(args []string) error {
	fs := flag.NewFlagSet("check", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig, as --audit-webhook-config-file takes it")
	policyFile := fs.String("policy", "", "audit policy, as --audit-policy-file takes it")
	_ = fs.Parse(args)
	if *kubeconfig == "" && *policyFile == "" {
		return errors.New("check needs --kubeconfig or --policy")
	}
	klog.SetLogger(errorLogger(&errorSink{}))
	if *kubeconfig != "" {
		// The API server's path: the webhook plugin loads the file with webhook.LoadKubeconfig
		// and builds its REST client from it; an error here fails kube-apiserver at start.
		if _, err := pluginwebhook.NewBackend(*kubeconfig, groupVersion,
			webhook.DefaultRetryBackoffWithInitialDelay(pluginwebhook.DefaultInitialBackoffDelay), nil); err != nil {
			return fmt.Errorf("%s: initializing audit webhook: %w", *kubeconfig, err)
		}
	}
	if *policyFile != "" {
		// --audit-policy-file's loader: strict decoding and the API server's validation.
		if _, err := policy.LoadPolicyFromFile(*policyFile); err != nil {
			return err
		}
	}
	fmt.Println("ok")
	return nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: auditclient send|check [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "send":
		err = send(os.Args[2:])
	case "check":
		err = check(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q: use send or check", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
