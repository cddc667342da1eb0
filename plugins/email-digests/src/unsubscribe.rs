//! The unsubscribe token in every digest: an HS256 JWT `{userId, type, iat, exp}` valid 30 days, signed
//! with `UNSUBSCRIBE_SECRET` (or `JWT_SECRET`), which FrostGuard's `GET /unsubscribe?token=` verifies (jose's
//! `jwtVerify` with the same secret: signature, `exp`, `userId` a string, `type` daily/weekly/all).
//!
//! `iat` is the run's due time, not the clock: every attempt of one run signs the same token, so a retried
//! request is byte-for-byte the first one (Resend refuses a reused `Idempotency-Key` with another body).

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::job::Period;

/// How long a link works (FrostGuard: `setExpirationTime('30d')`).
pub const VALIDITY: chrono::Duration = chrono::Duration::days(30);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    pub user_id: String,
    /// `daily` or `weekly` here; the API also accepts `all`.
    #[serde(rename = "type")]
    pub kind: String,
    pub iat: i64,
    pub exp: i64,
}

pub struct Signer {
    key: EncodingKey,
}

impl Signer {
    pub fn new(secret: &[u8]) -> Signer {
        Signer {
            key: EncodingKey::from_secret(secret),
        }
    }

    /// The token for `user_id`'s `period` digest issued at `issued_at`.
    pub fn token(
        &self,
        user_id: &str,
        period: Period,
        issued_at: DateTime<Utc>,
    ) -> Result<String, String> {
        let claims = Claims {
            user_id: user_id.to_owned(),
            kind: period.as_str().to_owned(),
            iat: issued_at.timestamp(),
            exp: (issued_at + VALIDITY).timestamp(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| format!("cannot sign the unsubscribe token: {e}"))
    }
}

/// `{app}/unsubscribe?token=<jwt>` (a JWT is URL-safe as it is).
pub fn link(app_url: &str, token: &str) -> String {
    format!("{app_url}/unsubscribe?token={token}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn token_verifies_with_the_secret_and_expires_in_30_days() {
        let at = DateTime::from_timestamp(1_767_254_400, 0).unwrap();
        let token = Signer::new(b"s3cret")
            .token("u-1", Period::Weekly, at)
            .unwrap();
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        let data = jsonwebtoken::decode::<Claims>(&token, &DecodingKey::from_secret(b"s3cret"), &v)
            .unwrap();
        assert_eq!(
            data.claims,
            Claims {
                user_id: "u-1".into(),
                kind: "weekly".into(),
                iat: 1_767_254_400,
                exp: 1_767_254_400 + 30 * 86_400
            }
        );
        assert!(
            jsonwebtoken::decode::<Claims>(&token, &DecodingKey::from_secret(b"other"), &v)
                .is_err()
        );
        // Same run, same token.
        assert_eq!(
            Signer::new(b"s3cret")
                .token("u-1", Period::Weekly, at)
                .unwrap(),
            token
        );
        assert_eq!(
            link("https://app.example.com", &token),
            format!("https://app.example.com/unsubscribe?token={token}")
        );
    }
}
