#!/usr/bin/env python3
"""Extract the TLS/DTLS 1.2 client transcript (ClientHello..ClientKeyExchange) from an
`openssl s_client/s_server -msg` log and verify the client's CertificateVerify over it."""
import re, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

log, out = sys.argv[1], sys.argv[2]
entries, cur = [], None
for line in open(log, errors='replace'):
    if line.startswith('<<< ') or line.startswith('>>> '):
        cur = [line, bytearray()]
        entries.append(cur)
    elif cur is not None and re.match(r'^    ([0-9a-f]{2} ?)+\s*$', line):
        cur[1] += bytes.fromhex(line.strip().replace(' ', ''))
    else:
        cur = None
msgs = [bytes(b) for h, b in entries
        if ('Handshake' in h or 'content_type=22' in h) and 'RecordHeader' not in h]
dtls = len(msgs[0]) > 13 and msgs[0][12:14] == b'\xfe\xfd'
hl = 12 if dtls else 4
# Retransmissions (DTLS) show up twice in a row.
msgs = [m for i, m in enumerate(msgs) if i == 0 or m != msgs[i - 1]]
# DTLS: the first ClientHello and the HelloVerifyRequest are not in the transcript
# (a stateless server's log shows the first ClientHello but not its HelloVerifyRequest).
sh = [i for i, m in enumerate(msgs) if m[0] == 2][0]
ch = max(i for i, m in enumerate(msgs[:sh]) if m[0] == 1)
msgs = msgs[ch:]
transcript = b''
for i, m in enumerate(msgs):
    if m[0] == 15:
        cv = m[hl:]
        break
    transcript += m
else:
    sys.exit('no CertificateVerify')
assert msgs[i - 1][0] == 16, 'last message before CV is not ClientKeyExchange'
# Client certificate: the Certificate message before ClientKeyExchange
cm = msgs[i - 2]
assert cm[0] == 11
body = cm[hl:]
c1 = int.from_bytes(body[3:6], 'big')
cert = x509.load_der_x509_certificate(body[6:6 + c1])
alg = int.from_bytes(cv[0:2], 'big')
sig = cv[4:4 + int.from_bytes(cv[2:4], 'big')]
h = {4: hashes.SHA256(), 5: hashes.SHA384(), 6: hashes.SHA512()}
pub = cert.public_key()
if alg >> 8 == 8:
    hh = h[alg & 0xff]
    pub.verify(sig, transcript, padding.PSS(padding.MGF1(hh), hh.digest_size), hh)
elif alg & 0xff == 3:
    pub.verify(sig, transcript, ec.ECDSA(h[alg >> 8]))
elif alg & 0xff == 1:
    pub.verify(sig, transcript, padding.PKCS1v15(), h[alg >> 8])
else:
    sys.exit('sigalg %04x' % alg)
open(out, 'w').write(transcript.hex() + '\n')
print('%s: %s %d bytes, %d messages, sigalg %04x verified' % (out, 'DTLS' if dtls else 'TLS', len(transcript), i, alg))
