// A local stand-in for the Resend emails API, for the demo (scripts/run-demo.sh): no email leaves the machine.
//
//   node scripts/fake-resend.mjs <port> <out-dir>
//
// POST /emails with a bearer token and JSON {from, to, subject, html, text, headers, tags}: accepted (200,
// {id: "demo-email-<n>"}); the email is written to <out-dir>/email-<n>.html, .txt and .json (everything but
// the bodies). Like Resend, a repeated Idempotency-Key gets the first answer again and sends nothing new.
// Each request is logged on stdout (subject and key, no addresses).

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const port = Number(process.argv[2]);
const outDir = process.argv[3];
if (!port || !outDir) {
  console.error('usage: node fake-resend.mjs <port> <out-dir>');
  process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });

const byKey = new Map();
let sent = 0;

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    if (req.method !== 'POST' || req.url !== '/emails') {
      reply(res, 404, { statusCode: 404, name: 'not_found', message: 'The requested endpoint does not exist.' });
      return;
    }
    if (!(req.headers.authorization ?? '').startsWith('Bearer ')) {
      reply(res, 401, { statusCode: 401, name: 'missing_api_key', message: 'Missing API key in the authorization header.' });
      return;
    }
    let email;
    try {
      email = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      reply(res, 422, { statusCode: 422, name: 'invalid_parameter', message: 'Body is not JSON.' });
      return;
    }
    if (!email.from || !email.to || !email.subject) {
      reply(res, 422, { statusCode: 422, name: 'missing_required_field', message: 'from, to and subject are required.' });
      return;
    }
    const key = req.headers['idempotency-key'];
    if (key && byKey.has(key)) {
      console.log(`fake-resend: POST /emails key=${key} -> 200 ${byKey.get(key)} (repeated key, not sent again)`);
      reply(res, 200, { id: byKey.get(key) });
      return;
    }
    sent += 1;
    const id = `demo-email-${sent}`;
    if (key) byKey.set(key, id);
    const base = path.join(outDir, `email-${sent}`);
    const { html, text, ...meta } = email;
    fs.writeFileSync(`${base}.html`, html ?? '');
    fs.writeFileSync(`${base}.txt`, text ?? '');
    fs.writeFileSync(`${base}.json`, JSON.stringify({ id, idempotencyKey: key ?? null, ...meta }, null, 2));
    console.log(`fake-resend: POST /emails subject=${JSON.stringify(email.subject)} key=${key} -> 200 ${id}, written to ${base}.html`);
    reply(res, 200, { id });
  });
});

server.listen(port, '127.0.0.1', () => console.log(`fake-resend: listening on http://127.0.0.1:${port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
