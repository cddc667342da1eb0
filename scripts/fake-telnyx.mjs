// A local stand-in for the Telnyx messaging API, for the demo (scripts/run-demo.sh): no SMS leaves the machine.
//
//   node scripts/fake-telnyx.mjs <port>
//
// POST /v2/messages with a bearer token and JSON {from, to, text}:
//   - a `to` ending in 0000 is answered like an opted-out number (422, code 40300, a permanent error);
//   - anything else is accepted (200, data.id = "demo-msg-<n>").
// Each request is logged on stdout with the recipient masked and without the message text.

import http from 'node:http';

const port = Number(process.argv[2]);
if (!port) {
  console.error('usage: node fake-telnyx.mjs <port>');
  process.exit(2);
}

const mask = (phone) => (typeof phone === 'string' && phone.length > 4 ? `${'*'.repeat(phone.length - 4)}${phone.slice(-4)}` : '?');
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
    if (req.method !== 'POST' || req.url !== '/v2/messages') {
      reply(res, 404, { errors: [{ code: '10005', title: 'Resource not found' }] });
      return;
    }
    if (!(req.headers.authorization ?? '').startsWith('Bearer ')) {
      reply(res, 401, { errors: [{ code: '10009', title: 'Authentication failed' }] });
      return;
    }
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      reply(res, 400, { errors: [{ code: '10004', title: 'Bad request' }] });
      return;
    }
    if (String(body.to).endsWith('0000')) {
      console.log(`fake-telnyx: POST /v2/messages to=${mask(body.to)} -> 422 (40300 opted out)`);
      reply(res, 422, {
        errors: [{ code: '40300', title: 'Blocked due to STOP message', detail: 'The recipient has opted out.' }],
      });
      return;
    }
    sent += 1;
    const id = `demo-msg-${sent}`;
    console.log(`fake-telnyx: POST /v2/messages to=${mask(body.to)} -> 200 ${id}`);
    reply(res, 200, {
      data: { id, record_type: 'message', to: [{ phone_number: body.to, status: 'queued' }], from: { phone_number: body.from } },
    });
  });
});

server.listen(port, '127.0.0.1', () => console.log(`fake-telnyx: listening on http://127.0.0.1:${port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
