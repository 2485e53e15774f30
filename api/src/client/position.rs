//! Positions in a partition as the client's `--from` and `--to` options spell them:
//! `earliest`, `latest`, an offset (`42` or `offset:42`), a time (`timestamp:<ms>`),
//! or a time relative to now (`-30s`, `-15m`, `-2h`, `-7d`).

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where to start reading (or where to reset a group to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The first stored record.
    Earliest,
    /// The end: only records written from now on.
    Latest,
    /// This offset (clamped to what is stored).
    Offset(u64),
    /// The first record at or after this time, in ms since the epoch.
    Timestamp(i64),
}

impl Position {
    /// The WebSocket `from` parameter for this position.
    pub fn ws_from(self) -> String {
        match self {
            Position::Earliest => "earliest".into(),
            Position::Latest => "latest".into(),
            Position::Offset(o) => format!("offset:{o}"),
            Position::Timestamp(ms) => format!("timestamp:{ms}"),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `30s`, `15m`, `2h`, `7d`, `500ms` in milliseconds.
fn duration_ms(text: &str) -> Option<i64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: i64 = n.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

impl FromStr for Position {
    type Err = String;

    fn from_str(s: &str) -> Result<Position, String> {
        let bad = || {
            format!(
                "{s:?} is not a position: use earliest, latest, an offset (42 or offset:42), \
                 timestamp:<ms since the epoch>, or a time ago like -15m, -2h, -7d"
            )
        };
        match s {
            "earliest" => Ok(Position::Earliest),
            "latest" => Ok(Position::Latest),
            _ => {
                if let Some(ago) = s.strip_prefix('-') {
                    let ms = duration_ms(ago).ok_or_else(bad)?;
                    Ok(Position::Timestamp(now_ms().saturating_sub(ms)))
                } else if let Some(ms) = s.strip_prefix("timestamp:") {
                    ms.parse().map(Position::Timestamp).map_err(|_| bad())
                } else {
                    s.strip_prefix("offset:").unwrap_or(s).parse().map(Position::Offset).map_err(|_| bad())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses() {
        assert_eq!("earliest".parse(), Ok(Position::Earliest));
        assert_eq!("latest".parse(), Ok(Position::Latest));
        assert_eq!("42".parse(), Ok(Position::Offset(42)));
        assert_eq!("offset:7".parse(), Ok(Position::Offset(7)));
        assert_eq!("timestamp:1700000000000".parse(), Ok(Position::Timestamp(1_700_000_000_000)));
        let Ok(Position::Timestamp(ms)) = "-2h".parse::<Position>() else { panic!("-2h") };
        let expected = now_ms() - 7_200_000;
        assert!((expected - ms).abs() < 60_000, "{ms} vs {expected}");
        assert!("soon".parse::<Position>().is_err());
        assert!("-2w".parse::<Position>().is_err());
        assert!("-h".parse::<Position>().is_err());
        assert_eq!(Position::Timestamp(5).ws_from(), "timestamp:5");
        assert_eq!(Position::Offset(5).ws_from(), "offset:5");
    }
}
