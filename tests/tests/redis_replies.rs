//! The patched redis-rs reply decoder (vendor/redis/PATCHES.md) reads every reply as the published one did.
//!
//! The async connections decode replies with `ValueCodec`, which now reads a reply that is whole in the buffer
//! directly and leaves the rest to redis-rs's `combine` grammar. The synchronous `parse_redis_value` still goes
//! through the grammar alone, so it is the reference: every reply, fed to the codec whole, several in one
//! buffer, cut at every byte, or arriving in reads too small for it, must decode to exactly what the grammar
//! gives. Then a real `redis-server` answers large and nested replies over a multiplexed connection.

use bytes::BytesMut;
use frostguard_tests::RedisServer;
use redis::{parse_redis_value, Value, ValueCodec};
use tokio_util::codec::Decoder;

/// Replies of every RESP type: the ones the direct reader takes, the RESP3 ones it leaves to the grammar,
/// and mixtures of both inside arrays.
fn replies() -> Vec<Vec<u8>> {
    let mut replies: Vec<Vec<u8>> = [
        &b"+OK\r\n"[..],
        b"+QUEUED\r\n",
        b"+\r\n",
        b"+a\rb\r\n",
        b"-ERR unknown command 'FOO'\r\n",
        b"-NOSCRIPT No matching script. Please use EVAL.\r\n",
        b"-LOADING Redis is loading the dataset in memory\r\n",
        b"-MOVED 3999 127.0.0.1:6381\r\n",
        b":0\r\n",
        b":-1\r\n",
        b":+5\r\n",
        b": 12 \r\n",
        b":9223372036854775807\r\n",
        b":-9223372036854775808\r\n",
        b"$0\r\n\r\n",
        b"$-1\r\n",
        b"$4\r\n\r\n\r\n\r\n",
        b"$3\r\n\xff\x00\xfe\r\n",
        b"*0\r\n",
        b"*-1\r\n",
        b"_\r\n",
        b",3.25\r\n",
        b"#f\r\n",
        b"%1\r\n$1\r\nk\r\n:1\r\n",
        b"~2\r\n:1\r\n:2\r\n",
        b"(123456789012345678901234567890\r\n",
        b"=8\r\ntxt:some\r\n",
        b"!9\r\nERR oops!\r\n",
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
        b"*3\r\n+OK\r\n-LOADING server is loading\r\n+OK\r\n",
        b"*3\r\n:1\r\n,2.5\r\n$1\r\nx\r\n",
        b"*2\r\n*2\r\n$1\r\na\r\n*-1\r\n*1\r\n_\r\n",
    ]
    .iter()
    .map(|r| r.to_vec())
    .collect();
    // A job fetched by BullMQ's moveToActive: [the hash's field/value pairs, id, 0, 0].
    let mut hash = Vec::new();
    let fields = [
        ("name", "sms:send"),
        (
            "data",
            r#"{"phoneNumber":"+15551234567","message":"CRITICAL: é ✓"}"#,
        ),
        (
            "opts",
            r#"{"attempts":5,"backoff":{"type":"exponential","delay":2000}}"#,
        ),
        ("timestamp", "1765000000000"),
        ("delay", "0"),
        ("priority", "0"),
        ("processedOn", "1765000000123"),
        ("ats", "1"),
    ];
    hash.extend_from_slice(format!("*4\r\n*{}\r\n", fields.len() * 2).as_bytes());
    for (k, v) in fields {
        for s in [k, v] {
            hash.extend_from_slice(format!("${}\r\n{s}\r\n", s.len()).as_bytes());
        }
    }
    hash.extend_from_slice(b"$2\r\n42\r\n:0\r\n:0\r\n");
    replies.push(hash);
    // Nested to the grammar's depth limit (100), and one level beyond it (a parse error either way).
    for depth in [100, 101] {
        let mut nested = b"*1\r\n".repeat(depth - 1);
        nested.extend_from_slice(b":7\r\n");
        replies.push(nested);
    }
    // Larger than the part of a reply the codec waits to read whole (64 KiB): the grammar takes it over.
    let big = "v".repeat(100 * 1024);
    replies.push(format!("*2\r\n${}\r\n{big}\r\n:1\r\n", big.len()).into_bytes());
    replies
}

/// What the grammar alone makes of `reply` (a value, or that it is not a valid reply).
fn reference(reply: &[u8]) -> Result<Value, ()> {
    parse_redis_value(reply).map_err(|_| ())
}

/// Feeds `stream` to a fresh codec in reads of `read` bytes (the rest at the end of the input, as a
/// connection's last read) and returns every value it decoded, up to its first error.
fn decode_in_reads(stream: &[u8], read: usize) -> Vec<Result<Value, ()>> {
    let mut codec = ValueCodec::default();
    let mut buffer = BytesMut::new();
    let mut decoded = Vec::new();
    let mut fed = 0;
    loop {
        let eof = fed == stream.len();
        let next = if eof {
            codec.decode_eof(&mut buffer)
        } else {
            codec.decode(&mut buffer)
        };
        match next {
            Ok(Some(value)) => decoded.push(Ok(value)),
            Ok(None) if eof => return decoded,
            Ok(None) => {
                let end = fed.saturating_add(read).min(stream.len());
                buffer.extend_from_slice(&stream[fed..end]);
                fed = end;
            }
            Err(_) => {
                decoded.push(Err(()));
                return decoded;
            }
        }
    }
}

#[test]
fn each_reply_decodes_as_the_grammar_reads_it_whole_and_in_any_reads() {
    for reply in replies() {
        let want = vec![reference(&reply)];
        let shown = String::from_utf8_lossy(&reply[..reply.len().min(80)]).into_owned();
        assert_eq!(
            decode_in_reads(&reply, usize::MAX),
            want,
            "whole: {shown:?}"
        );
        let reads: Vec<usize> = if reply.len() > 4096 {
            vec![1, 7, 4096, 16 * 1024]
        } else {
            (1..=reply.len()).collect()
        };
        for read in reads {
            assert_eq!(
                decode_in_reads(&reply, read),
                want,
                "reads of {read}: {shown:?}"
            );
        }
    }
}

#[test]
fn replies_in_one_stream_decode_in_order_whatever_the_reads() {
    // Every valid reply back to back, as a pipeline's replies arrive: the direct reader and the grammar
    // take turns on one codec, and a reply the grammar began must be finished by it.
    let valid: Vec<Vec<u8>> = replies()
        .into_iter()
        .filter(|r| reference(r).is_ok())
        .collect();
    let want: Vec<Result<Value, ()>> = valid.iter().map(|r| reference(r)).collect();
    let stream = valid.concat();
    for read in [1, 2, 3, 5, 64, 1000, 8192, 70 * 1024, usize::MAX] {
        assert_eq!(decode_in_reads(&stream, read), want, "reads of {read}");
    }
}

/// A small deterministic generator (xorshift64*): the same replies on every run, so a failure reproduces.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Bytes that favour RESP's own: CR, LF, digits, signs, type bytes, and now and then anything.
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        const LIKELY: &[u8] = b"\r\n0123456789-+ :$*_,#%~>OKERRab";
        (0..len)
            .map(|_| match self.below(4) {
                0 => self.next() as u8,
                _ => LIKELY[self.below(LIKELY.len() as u64) as usize],
            })
            .collect()
    }

    /// One random reply, nested up to `depth` more levels.
    fn reply(&mut self, depth: u32, out: &mut Vec<u8>) {
        let text = |d: &mut Dice| {
            let len = d.below(6) as usize;
            d.bytes(len)
                .into_iter()
                .filter(|b| *b != b'\r' && *b != b'\n')
                .collect::<Vec<u8>>()
        };
        match self.below(if depth == 0 { 8 } else { 10 }) {
            0 => {
                out.push(b'+');
                out.extend(text(self));
                out.extend_from_slice(b"\r\n");
            }
            1 => {
                out.push(b'-');
                out.extend(text(self));
                out.extend_from_slice(b"\r\n");
            }
            2 => out.extend_from_slice(
                format!(":{}\r\n", self.next() as i64 >> self.below(64)).as_bytes(),
            ),
            3 | 4 => {
                let len = self.below(20) as usize;
                let body = self.bytes(len);
                out.extend_from_slice(format!("${}\r\n", body.len()).as_bytes());
                out.extend(body);
                out.extend_from_slice(b"\r\n");
            }
            5 => out
                .extend_from_slice([&b"$-1\r\n"[..], b"*-1\r\n", b"_\r\n"][self.below(3) as usize]),
            6 => out.extend_from_slice(format!(",{}.5\r\n", self.below(100)).as_bytes()),
            7 => out.extend_from_slice(b"#t\r\n"),
            _ => {
                let n = self.below(5);
                out.extend_from_slice(format!("*{n}\r\n").as_bytes());
                for _ in 0..n {
                    self.reply(depth - 1, out);
                }
            }
        }
    }
}

#[test]
fn random_replies_whole_cut_or_damaged_decode_as_the_grammar_reads_them() {
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
    for case in 0..3000 {
        let mut reply = Vec::new();
        dice.reply(4, &mut reply);
        // A third stay whole, a third lose their end, a third get one byte changed.
        match dice.below(3) {
            0 => {}
            1 => reply.truncate(dice.below(reply.len() as u64) as usize),
            _ => {
                let at = dice.below(reply.len() as u64) as usize;
                reply[at] = dice.bytes(1)[0];
            }
        }
        let want = reference(&reply);
        let whole = decode_in_reads(&reply, usize::MAX);
        let first = whole.first().cloned().unwrap_or(Err(()));
        let shown = String::from_utf8_lossy(&reply).into_owned();
        assert_eq!(first, want, "case {case}, whole: {shown:?}");
        let read = 1 + dice.below(8) as usize;
        assert_eq!(
            decode_in_reads(&reply, read),
            whole,
            "case {case}, reads of {read}: {shown:?}"
        );
    }
}

#[test]
fn a_connection_reads_large_and_nested_replies_from_redis() {
    let redis = RedisServer::start().expect("redis-server");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = redis::Client::open(redis.url()).expect("client");
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let big = "x".repeat(300 * 1024);
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg("big").arg(&big).ignore();
        for i in 0..200 {
            pipe.cmd("HSET")
                .arg("h")
                .arg(format!("f{i}"))
                .arg(format!("v{i}\r\n"))
                .ignore();
        }
        let () = pipe.query_async(&mut con).await.expect("writes");
        // Pipelined reads: a reply larger than a socket read, a 400-element array and an error among them.
        let replies: Vec<Value> = redis::pipe()
            .cmd("GET")
            .arg("big")
            .cmd("HGETALL")
            .arg("h")
            .cmd("EVAL")
            .arg("return {1, {'a', {2, false}}, redis.status_reply('FINE')}")
            .arg(0)
            .cmd("GET")
            .arg("missing")
            .query_async(&mut con)
            .await
            .expect("reads");
        assert_eq!(replies[0], Value::BulkString(big.into_bytes()));
        let Value::Array(pairs) = &replies[1] else {
            panic!("HGETALL: {:?}", replies[1]);
        };
        assert_eq!(pairs.len(), 400);
        for pair in pairs.chunks(2) {
            let (Value::BulkString(k), Value::BulkString(v)) = (&pair[0], &pair[1]) else {
                panic!("pair {pair:?}");
            };
            let i = &k[1..];
            assert_eq!(v, &[b"v", i, b"\r\n"].concat());
        }
        assert_eq!(
            replies[2],
            Value::Array(vec![
                Value::Int(1),
                Value::Array(vec![
                    Value::BulkString(b"a".to_vec()),
                    Value::Array(vec![Value::Int(2), Value::Nil]),
                ]),
                Value::SimpleString("FINE".into()),
            ])
        );
        assert_eq!(replies[3], Value::Nil);
        // An error reply reaches the caller as the server's error, and the connection goes on.
        let err = redis::cmd("NOSUCHCOMMAND")
            .query_async::<Value>(&mut con)
            .await
            .expect_err("unknown command");
        assert!(err.to_string().contains("unknown command"), "{err}");
        let pong: String = redis::cmd("PING")
            .query_async(&mut con)
            .await
            .expect("ping");
        assert_eq!(pong, "PONG");
    });
}
