//! Masking of personal data before it reaches a log line or a failure reason.
//!
//! Phone numbers are personal data: FrostGuard's original worker logged them as "first 5 and last 2
//! characters", and we keep that shape so operators recognise it. Text coming back from Telnyx (an error's
//! `detail`) may quote the destination number, so it is scrubbed too before we log it, store it as the
//! job's `failedReason` (which the host logs) or write it to the delivery row.

/// Longest provider text we pass on; error details are short, anything longer is noise or an attack.
const MAX_PROVIDER_TEXT: usize = 300;

/// Masks a phone number (or whatever the producer put in `phoneNumber`) for logging.
///
/// Numbers of a plausible E.164 length show their first 5 and last 2 characters, e.g. `+1555*****67`.
/// Anything shorter or longer is not a real number and shows only its length, so that garbage (an email
/// address typed into the wrong field, a huge string) never leaks or floods a log line.
pub fn mask_phone(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().collect();
    let n = chars.len();
    if (10..=16).contains(&n) {
        let head: String = chars[..5].iter().collect();
        let tail: String = chars[n - 2..].iter().collect();
        format!("{head}{}{tail}", "*".repeat(n - 7))
    } else {
        format!("<{n} chars masked>")
    }
}

/// Scrubs phone-number-like runs (a `+` or digit followed by 6+ digits, spaces or dashes) out of free text
/// and caps its length. Used on every piece of text that came from the provider.
pub fn scrub_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_PROVIDER_TEXT));
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '+' || c.is_ascii_digit() {
            // Take the longest run of digits (allowing single separators) starting here.
            let mut j = i + 1;
            let mut digits = usize::from(c.is_ascii_digit());
            while j < chars.len() {
                if chars[j].is_ascii_digit() {
                    digits += 1;
                    j += 1;
                } else if (chars[j] == ' ' || chars[j] == '-')
                    && j + 1 < chars.len()
                    && chars[j + 1].is_ascii_digit()
                {
                    j += 1;
                } else {
                    break;
                }
            }
            // Error codes (5 digits) and small numbers stay readable; phone numbers do not.
            if digits >= 7 {
                let run: String = chars[i..j]
                    .iter()
                    .filter(|c| **c != ' ' && **c != '-')
                    .collect();
                out.push_str(&mask_phone(&run));
            } else {
                out.extend(&chars[i..j]);
            }
            i = j;
        } else {
            out.push(if c.is_control() { ' ' } else { c });
            i += 1;
        }
    }
    if out.chars().count() > MAX_PROVIDER_TEXT {
        out = out.chars().take(MAX_PROVIDER_TEXT).collect::<String>() + "…";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_e164_numbers_keeping_five_and_two() {
        assert_eq!(mask_phone("+15551234567"), "+1555*****67");
        assert_eq!(mask_phone("+447911123456"), "+4479******56");
        assert_eq!(mask_phone("+123456789012345"), "+1234*********45");
    }

    #[test]
    fn short_long_or_garbage_values_show_only_their_length() {
        assert_eq!(mask_phone("+1234"), "<5 chars masked>");
        assert_eq!(mask_phone(""), "<0 chars masked>");
        assert_eq!(mask_phone("jane.doe@example.com"), "<20 chars masked>");
        assert_eq!(mask_phone(&"9".repeat(5000)), "<5000 chars masked>");
    }

    #[test]
    fn scrubs_numbers_inside_provider_text_but_keeps_codes() {
        assert_eq!(
            scrub_text("The destination +15551234567 is opted out (40300)"),
            "The destination +1555*****67 is opted out (40300)"
        );
        assert_eq!(scrub_text("call 555-123-4567 now"), "call 55512***67 now");
        assert_eq!(
            scrub_text("code 10011, retry in 30 s"),
            "code 10011, retry in 30 s"
        );
    }

    #[test]
    fn caps_and_flattens_provider_text() {
        let long = "x".repeat(1000);
        let s = scrub_text(&long);
        assert_eq!(s.chars().count(), MAX_PROVIDER_TEXT + 1);
        assert_eq!(scrub_text("a\nb\tc"), "a b c");
    }
}
