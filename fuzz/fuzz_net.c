/*
 * fuzz_net -- libFuzzer target for what tally reads from its environment
 * to reach the network: the metrics endpoint's address (HOST:PORT) and
 * OTEL_EXPORTER_OTLP_HEADERS.  The input is split at its first newline:
 * the address before, the headers after.
 *
 * Properties checked on every input:
 *   - nothing crashes or reads outside the input (ASan);
 *   - an accepted address is IPv4 or IPv6 with the matching length;
 *   - every header line is "Name: value" with a non-empty name and no
 *     control character anywhere (no CR LF can start another header).
 */
#include <curl/curl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "otlp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = 0;
    char *nl = strchr(s, '\n');
    const char *headers = "";
    if (nl) {
        *nl = 0;
        headers = nl + 1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    char err[256];
    if (metrics_listen_parse(s, &ss, &sl, err, sizeof err) == 0) {
        if (ss.ss_family == AF_INET) {
            if (sl != sizeof(struct sockaddr_in)) abort();
        } else if (ss.ss_family == AF_INET6) {
            if (sl != sizeof(struct sockaddr_in6)) abort();
        } else {
            abort();
        }
    }
    struct curl_slist *l = otlp_parse_headers(headers);
    for (struct curl_slist *h = l; h; h = h->next) {
        const char *colon = strstr(h->data, ": ");
        if (!colon || colon == h->data) abort();
        for (const char *c = h->data; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f) abort();
    }
    curl_slist_free_all(l);
    free(s);
    return 0;
}
