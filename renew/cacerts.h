/*
 * CA certificate refresh for renewal (issue 10): the trust anchors in force
 * for an identity are its configured ca-trust plus the successors accepted
 * since (<state-dir>/<identity>.ca-next), and before each EST renewal the
 * CA's current certificates are fetched from /cacerts (RFC 7030 §4.1.3).
 *
 * A new root (self-signed CA certificate) in /cacerts is accepted only when
 * the same answer holds its link certificate, "NewWithOld": same subject,
 * same public key, issued directly by an anchor already in force (no
 * intermediate in between: an intermediate's key must not be able to make a
 * root). Anything else is refused with a warning and never trusted. The link
 * is kept beside the root (<identity>.ca-links) and re-checked at every load,
 * so a root removed from ca-trust takes the successors it vouched for along. The CA's
 * intermediates are returned for the chain of the next certificate, so an
 * installed chain holds the intermediates in force even when the CA's
 * enrollment answer carries the issued certificate alone.
 */
#ifndef MTLS_AGENT_CACERTS_H
#define MTLS_AGENT_CACERTS_H

#include <stddef.h>

#include <openssl/x509.h>

#include "agent/state.h"

/*
 * The anchors in force for id (ca-trust, then accepted successors) as a new
 * store, or NULL with err set when ca-trust cannot be loaded.
 */
X509_STORE *cacerts_trust_store(struct identity_rt *id, char *err, size_t errlen);

/*
 * A PEM file holding the anchors in force, for libcurl and OpenSSL's CMP
 * client: ca-trust itself while no successor is in force, else
 * <state-dir>/<identity>.trust (ca-trust + successors), rewritten from them
 * at each call. Caller frees; NULL without memory.
 */
char *cacerts_trust_file(struct identity_rt *id);

/*
 * Fetches cacerts from id's EST CA, accepts new roots as above and returns
 * the CA's intermediates (caller frees with sk_X509_pop_free), or NULL when
 * the CA cannot be reached or sent none (logged; renewal goes on without).
 */
STACK_OF(X509) *cacerts_refresh(struct identity_rt *id);

#endif
