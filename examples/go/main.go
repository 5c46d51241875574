// Command find_service finds the instances of a service through plain DNS: the standard
// library's net.LookupSRV, with a resolver that sends its queries to srvdns.
//
//	cd examples/go && go run . [SERVICE] [DNS_SERVER:PORT]
//
// SERVICE defaults to $SRVDNS_SERVICE or "payment"; the server to $SRVDNS_DNS or
// 127.0.0.1:8600; the domain is $SRVDNS_DOMAIN or "service.local". Prints one line per
// instance: target, port, priority, weight, address. LookupSRV returns the records sorted by
// priority and shuffled by weight (RFC 2782), so the first line is the one to connect to.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// setting is the command-line argument at position arg, else the environment variable env,
// else fallback.
func setting(arg int, env, fallback string) string {
	if len(os.Args) > arg && os.Args[arg] != "" {
		return os.Args[arg]
	}
	return fromEnv(env, fallback)
}

func fromEnv(env, fallback string) string {
	if value := os.Getenv(env); value != "" {
		return value
	}
	return fallback
}

func main() {
	service := setting(1, "SRVDNS_SERVICE", "payment")
	server := setting(2, "SRVDNS_DNS", "127.0.0.1:8600")
	domain := strings.TrimSuffix(fromEnv("SRVDNS_DOMAIN", "service.local"), ".")

	// Go's own resolver, dialing srvdns whatever /etc/resolv.conf says.
	resolver := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var dialer net.Dialer
			return dialer.DialContext(ctx, network, server)
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// Queries _<service>._tcp.<domain>.
	_, records, err := resolver.LookupSRV(ctx, service, "tcp", domain+".")
	if err != nil {
		fmt.Fprintf(os.Stderr, "find_service: %v\n", err)
		os.Exit(1)
	}
	for _, srv := range records {
		addresses, err := resolver.LookupHost(ctx, srv.Target)
		if err != nil || len(addresses) == 0 {
			fmt.Fprintf(os.Stderr, "find_service: cannot resolve %s: %v\n", srv.Target, err)
			os.Exit(1)
		}
		fmt.Printf("%s %d %d %d %s\n",
			strings.TrimSuffix(srv.Target, "."), srv.Port, srv.Priority, srv.Weight, addresses[0])
	}
}
