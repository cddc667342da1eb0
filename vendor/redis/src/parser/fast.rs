//! A direct reader for the replies Redis sends most: simple strings, errors, integers, bulk strings, arrays and
//! RESP3's null, when the whole reply is already in the buffer.
//!
//! The `combine` grammar in the parent module can stop anywhere in a reply and resume when more bytes arrive,
//! and pays for that on every byte it reads: for a reply of a few dozen bulk strings (a hash read by a script)
//! it runs about 500 instructions per element. Most replies arrive whole, so this reader tries first and
//! builds exactly the `Value` the grammar would. Anything it does not read itself (the other RESP3 types, a
//! malformed reply, a reply nested deeper than the grammar allows) it leaves to the grammar, which stays the
//! one judge of errors.

use std::str;

use super::{MAX_RECURSE_DEPTH, err_parser};
use crate::types::Value;

/// Why the direct reader gave up on the reply at the start of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NotRead {
    /// The buffer ends before the reply does.
    Incomplete,
    /// The reply is one the grammar must read: another RESP3 type, malformed, or too deep.
    ForGrammar,
}

/// Reads the reply at the start of `buf`: the value and the number of bytes it took.
pub(crate) fn reply(buf: &[u8]) -> Result<(Value, usize), NotRead> {
    let mut reader = Reader { buf, pos: 0 };
    let value = reader.value(1)?;
    Ok((value, reader.pos))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// One value, `depth` levels down (the top is 1, as in the grammar).
    fn value(&mut self, depth: usize) -> Result<Value, NotRead> {
        let kind = *self.buf.get(self.pos).ok_or(NotRead::Incomplete)?;
        if depth > MAX_RECURSE_DEPTH {
            return Err(NotRead::ForGrammar);
        }
        self.pos += 1;
        match kind {
            b'+' => {
                let line = self.text_line()?;
                Ok(if line == "OK" {
                    Value::Okay
                } else {
                    Value::SimpleString(line.to_owned())
                })
            }
            b'-' => Ok(Value::ServerError(err_parser(self.text_line()?))),
            b':' => self.int().map(Value::Int),
            b'_' => self.text_line().map(|_| Value::Nil),
            b'$' => {
                let size = self.int()?;
                if size < 0 {
                    return Ok(Value::Nil);
                }
                let start = self.pos;
                let end = start
                    .checked_add(size as usize)
                    .ok_or(NotRead::ForGrammar)?;
                let after = end.checked_add(2).ok_or(NotRead::ForGrammar)?;
                if after > self.buf.len() {
                    return Err(NotRead::Incomplete);
                }
                if &self.buf[end..after] != b"\r\n" {
                    return Err(NotRead::ForGrammar);
                }
                self.pos = after;
                Ok(Value::BulkString(self.buf[start..end].to_vec()))
            }
            b'*' => {
                let length = self.int()?;
                if length < 0 {
                    return Ok(Value::Nil);
                }
                // Every element takes at least three bytes: a hostile length cannot reserve more than the
                // buffer could hold.
                let room = (self.buf.len() - self.pos) / 3;
                let mut items = Vec::with_capacity((length as usize).min(room));
                for _ in 0..length {
                    items.push(self.value(depth + 1)?);
                }
                Ok(Value::Array(items))
            }
            _ => Err(NotRead::ForGrammar),
        }
    }

    /// The bytes up to the next CRLF (the grammar's `take_until_bytes("\r\n")`), and past it.
    fn line(&mut self) -> Result<&'a [u8], NotRead> {
        let rest = &self.buf[self.pos..];
        let mut from = 0;
        loop {
            let cr = rest[from..]
                .iter()
                .position(|&b| b == b'\r')
                .ok_or(NotRead::Incomplete)?
                + from;
            match rest.get(cr + 1) {
                Some(b'\n') => {
                    self.pos += cr + 2;
                    return Ok(&rest[..cr]);
                }
                Some(_) => from = cr + 1,
                None => return Err(NotRead::Incomplete),
            }
        }
    }

    /// A line that must be UTF-8, as the grammar requires of every line.
    fn text_line(&mut self) -> Result<&'a str, NotRead> {
        let line = self.line()?;
        str::from_utf8(line).map_err(|_| NotRead::ForGrammar)
    }

    /// A line read as the grammar reads a number: trimmed, then a signed 64-bit integer. Lengths and counts
    /// are plain digits, read without the text checks.
    fn int(&mut self) -> Result<i64, NotRead> {
        let line = self.line()?;
        if let Some(n) = plain_int(line) {
            return Ok(n);
        }
        str::from_utf8(line)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or(NotRead::ForGrammar)
    }
}

/// Up to 18 ASCII digits, after an optional minus: a number that cannot overflow an `i64`.
fn plain_int(line: &[u8]) -> Option<i64> {
    let (negative, digits) = match line {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Some(if negative { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_redis_value;

    /// Replies the direct reader takes whole; each must give what the grammar gives.
    const READ: &[&[u8]] = &[
        b"+OK\r\n",
        b"+QUEUED\r\n",
        b"+\r\n",
        b"+a\rb\r\n",
        b"-ERR unknown command\r\n",
        b"-LOADING server is loading\r\n",
        b"-NOSCRIPT No matching script\r\n",
        b"-CUSTOM\r\n",
        b":0\r\n",
        b":-42\r\n",
        b": 7 \r\n",
        b":9223372036854775807\r\n",
        b":-9223372036854775808\r\n",
        b":+5\r\n",
        b":007\r\n",
        b":-0\r\n",
        b"$0\r\n\r\n",
        b"$-1\r\n",
        b"$5\r\nhe\r\no\r\n",
        b"$3\r\n\xff\xfe\x00\r\n",
        b"*0\r\n",
        b"*-1\r\n",
        b"_\r\n",
        b"*3\r\n+OK\r\n-LOADING server is loading\r\n+OK\r\n",
        b"*2\r\n*2\r\n$1\r\na\r\n:1\r\n*0\r\n",
        b"*4\r\n*4\r\n$4\r\nname\r\n$8\r\ncomplete\r\n$4\r\ndata\r\n$12\r\n{\"result\":1}\r\n$1\r\n7\r\n:0\r\n:0\r\n",
    ];

    #[test]
    fn whole_replies_are_read_as_the_grammar_reads_them() {
        for &bytes in READ {
            let (value, used) = reply(bytes).unwrap_or_else(|e| panic!("{bytes:?}: {e:?}"));
            assert_eq!(used, bytes.len(), "{bytes:?}");
            assert_eq!(Ok(value), parse_redis_value(bytes), "{bytes:?}");
        }
    }

    #[test]
    fn a_reply_cut_short_is_incomplete() {
        for &bytes in READ {
            for cut in 0..bytes.len() {
                assert_eq!(
                    reply(&bytes[..cut]).map(|(_, used)| used),
                    Err(NotRead::Incomplete),
                    "{bytes:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn the_grammar_keeps_what_the_reader_does_not_take() {
        let table: &[&[u8]] = &[
            // other RESP3 types
            b"%1\r\n+a\r\n:1\r\n",
            b"~1\r\n:1\r\n",
            b",1.5\r\n",
            b"#t\r\n",
            b">2\r\n+message\r\n+x\r\n",
            b"(12345\r\n",
            b"=7\r\ntxt:abc\r\n",
            b"!3\r\nERR\r\n",
            b"|1\r\n+a\r\n:1\r\n:2\r\n",
            // inside an array
            b"*2\r\n:1\r\n,2.5\r\n",
            // malformed
            b":abc\r\n",
            b":-\r\n",
            b":9223372036854775808\r\n",
            b":1 2\r\n",
            b"$3\r\nabcd\r\n",
            b"+\xff\r\n",
            b"?\r\n",
        ];
        for &bytes in table {
            assert_eq!(reply(bytes).err(), Some(NotRead::ForGrammar), "{bytes:?}");
        }
    }

    #[test]
    fn nesting_beyond_the_grammars_limit_is_left_to_it() {
        let nested = |depth: usize| {
            let mut bytes = b"*1\r\n".repeat(depth - 1);
            bytes.extend_from_slice(b":1\r\n");
            bytes
        };
        let deepest = nested(MAX_RECURSE_DEPTH);
        assert_eq!(
            reply(&deepest).map(|(v, _)| v).ok(),
            parse_redis_value(&deepest).ok()
        );
        assert_eq!(
            reply(&nested(MAX_RECURSE_DEPTH + 1)).err(),
            Some(NotRead::ForGrammar)
        );
    }
}
