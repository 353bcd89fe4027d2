# ops/cluster/catalog.vcl - Varnish as the CDN tier in front of the readers' balancer.
# Shared by the local cluster (ops/dev.sh cluster) and compose (ops/docker/); each
# supplies backend.vcl beside this file: `backend default` (HAProxy) and `acl purgers`
# (who may send PURGE: the writers).
#
# What it caches: GET and HEAD of the storefront, for as long as the reader's
# Cache-Control allows (max-age; stale-while-revalidate as grace). What it never caches:
# reads carrying Min-Catalog-Token (read-your-writes goes to a reader), the operational
# endpoints, the change feed (/changes, streamed through), and anything else than
# GET/HEAD. Objects carry the readers' surrogate keys
# (the xkey header, CATALOG_SURROGATE_KEYS=true on the readers), which the writers'
# edge purger purges as changes are published:
#   PURGE / with `xkey-purge: p42 c:lamps`  -> every object carrying one of the keys
#   PURGE / with `xkey-purge: all`          -> everything (a ban)
# Validators pass through: a client's If-None-Match is answered 304 from the cache,
# and an expired object is revalidated with the reader's ETag (a 304 costs no body).
vcl 4.1;

import xkey;

include "backend.vcl";

sub vcl_recv {
    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        if (req.http.xkey-purge == "all") {
            ban("obj.status != 0");
            return (synth(200, "Banned everything"));
        }
        if (req.http.xkey-purge) {
            set req.http.n-gone = xkey.purge(req.http.xkey-purge);
            return (synth(200, "Invalidated " + req.http.n-gone + " objects"));
        }
        return (synth(400, "xkey-purge header required"));
    }
    if (req.method != "GET" && req.method != "HEAD") {
        return (pass);
    }
    if (req.http.Min-Catalog-Token) {
        return (pass);
    }
    if (req.url ~ "^/(healthz|readyz|metrics|openapi\.json)") {
        return (pass);
    }
    # The live change feed: one long response per subscriber, streamed as it comes.
    if (req.url ~ "^/changes") {
        return (pass);
    }
    # The storefront reads no cookies and no credentials.
    unset req.http.Cookie;
    unset req.http.Authorization;
    return (hash);
}

sub vcl_deliver {
    # The keys are the edge's business, not the client's.
    unset resp.http.xkey;
    unset resp.http.Surrogate-Key;
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
}
