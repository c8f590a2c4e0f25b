//! Maintenance windows: weekly (`"Sat 22:00 - Sun 06:00"`, `"Mon-Fri 22:00 - 06:00"`) or one-off
//! (`from`/`to`), in a named time zone, evaluated in local wall-clock time so DST moves the UTC
//! instants, never the local times. A local time that does not exist (spring forward) moves to
//! the first instant after the gap; an ambiguous one (fall back) takes the earlier instant, so a
//! window is never stretched.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

/// One window specification.
#[derive(Debug, Clone, PartialEq)]
pub enum Window {
    /// Every week on `days`, from `start` to `end` local time (`end_day` when given).
    Weekly {
        /// Days the window opens.
        days: Vec<Weekday>,
        /// Opening time.
        start: NaiveTime,
        /// Day it closes, when it is a fixed weekday.
        end_day: Option<Weekday>,
        /// Closing time.
        end: NaiveTime,
        /// Time zone.
        tz: Tz,
    },
    /// Once.
    Once {
        /// Opening (local).
        from: NaiveDateTime,
        /// Closing (local).
        to: NaiveDateTime,
        /// Time zone.
        tz: Tz,
    },
}

fn weekday(s: &str) -> Result<Weekday, String> {
    s.parse::<Weekday>().map_err(|_| format!("unknown weekday {s:?} (Mon, Tue, … Sun)"))
}

fn time(s: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s, "%H:%M").map_err(|_| format!("invalid time {s:?} (HH:MM)"))
}

/// Parses `"Sat 22:00 - Sun 06:00"` or `"Mon-Fri 22:00 - 06:00"` or `"Mon,Wed 08:00 - 12:00"`.
pub fn parse_weekly(spec: &str, tz: Tz) -> Result<Window, String> {
    let (open, close) = spec
        .split_once(" - ")
        .ok_or_else(|| format!("invalid weekly window {spec:?}: expected \"DAY HH:MM - [DAY] HH:MM\""))?;
    let mut o = open.split_whitespace();
    let (days_s, start_s) = (o.next().unwrap_or(""), o.next().unwrap_or(""));
    if o.next().is_some() || start_s.is_empty() {
        return Err(format!("invalid weekly window {spec:?}: expected \"DAY HH:MM - [DAY] HH:MM\""));
    }
    let mut days = Vec::new();
    for part in days_s.split(',') {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b) = (weekday(a)?, weekday(b)?);
            let mut d = a;
            loop {
                days.push(d);
                if d == b {
                    break;
                }
                d = d.succ();
            }
        } else {
            days.push(weekday(part)?);
        }
    }
    let c: Vec<&str> = close.split_whitespace().collect();
    let (end_day, end) = match c.as_slice() {
        [t] => (None, time(t)?),
        [d, t] => (Some(weekday(d)?), time(t)?),
        _ => return Err(format!("invalid weekly window {spec:?}: expected \"DAY HH:MM - [DAY] HH:MM\"")),
    };
    let start = time(start_s)?;
    if end_day.is_none() && end == start {
        return Err(format!("weekly window {spec:?} is empty"));
    }
    Ok(Window::Weekly { days, start, end_day, end, tz })
}

/// Parses a one-off window given as local `YYYY-MM-DD HH:MM` times.
pub fn parse_once(from: &str, to: &str, tz: Tz) -> Result<Window, String> {
    let p = |s: &str| {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M")
            .map_err(|_| format!("invalid date-time {s:?} (YYYY-MM-DD HH:MM)"))
    };
    let (from, to) = (p(from)?, p(to)?);
    if to <= from {
        return Err("one-off window closes before it opens".into());
    }
    Ok(Window::Once { from, to, tz })
}

/// The UTC instant of a local time, resolving DST gaps and overlaps as described above (an
/// ambiguous time gives its earlier instant).
pub fn local_to_utc(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    resolve(tz, local, false)
}

/// Like [`local_to_utc`], but an ambiguous time gives its later instant (for window openings).
fn local_to_utc_late(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    resolve(tz, local, true)
}

fn resolve(tz: Tz, local: NaiveDateTime, late: bool) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(a, b) => if late { b } else { a }.with_timezone(&Utc),
        LocalResult::None => {
            // Inside a gap: the first valid minute after it.
            let mut l = local;
            for _ in 0..(4 * 60) {
                l += Duration::minutes(1);
                if let Some(t) = tz.from_local_datetime(&l).earliest() {
                    return t.with_timezone(&Utc);
                }
            }
            Utc.from_utc_datetime(&local)
        }
    }
}

impl Window {
    /// Occurrences `[open, close)` as UTC seconds that overlap `[from, from + span)`, in order.
    pub fn occurrences(&self, from: i64, span: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        match self {
            Window::Once { from: f, to, tz } => {
                out.push((local_to_utc_late(*tz, *f).timestamp(), local_to_utc(*tz, *to).timestamp()));
            }
            Window::Weekly { days, start, end_day, end, tz } => {
                let Some(t0) = DateTime::from_timestamp(from, 0) else { return out };
                let local0 = t0.with_timezone(tz).date_naive();
                let days_ahead = span / 86400 + 2;
                let mut d: NaiveDate = local0 - Duration::days(8);
                let last = local0 + Duration::days(days_ahead);
                while d <= last {
                    if days.contains(&d.weekday()) {
                        let open = d.and_time(*start);
                        let close_date = match end_day {
                            Some(ed) => {
                                let mut n = (ed.num_days_from_monday() as i64
                                    - d.weekday().num_days_from_monday() as i64)
                                    .rem_euclid(7);
                                if n == 0 && *end <= *start {
                                    n = 7;
                                }
                                d + Duration::days(n)
                            }
                            None if *end > *start => d,
                            None => d + Duration::days(1),
                        };
                        let close = close_date.and_time(*end);
                        out.push((local_to_utc_late(*tz, open).timestamp(), local_to_utc(*tz, close).timestamp()));
                    }
                    d += Duration::days(1);
                }
            }
        }
        out.retain(|(o, c)| *c > from && *o < from + span.max(1));
        out.sort();
        out
    }
}

/// Merges the occurrences of several windows into disjoint `[open, close)` spans overlapping
/// `[from, from + span)`.
pub fn merged(windows: &[Window], from: i64, span: i64) -> Vec<(i64, i64)> {
    let mut all: Vec<(i64, i64)> = windows.iter().flat_map(|w| w.occurrences(from, span)).collect();
    all.sort();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for (o, c) in all {
        match out.last_mut() {
            Some(last) if o <= last.1 => last.1 = last.1.max(c),
            _ => out.push((o, c)),
        }
    }
    out
}

/// The window span containing `t`, if any.
pub fn containing(windows: &[Window], t: i64) -> Option<(i64, i64)> {
    merged(windows, t, 1).into_iter().find(|(o, c)| *o <= t && t < *c)
}

/// The next window opening strictly after `t`, looking up to a year ahead.
pub fn next_opening(windows: &[Window], t: i64) -> Option<i64> {
    merged(windows, t, 366 * 86400).into_iter().map(|(o, _)| o).find(|o| *o > t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> i64 {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap().and_utc().timestamp()
    }
    const BERLIN: Tz = chrono_tz::Europe::Berlin;

    #[test]
    fn weekend_window_in_winter_and_summer() {
        let w = vec![parse_weekly("Sat 22:00 - Sun 06:00", BERLIN).unwrap()];
        // 2026-12-05 is a Saturday; Berlin is UTC+1 in winter.
        assert_eq!(containing(&w, utc("2026-12-05 21:30")), Some((utc("2026-12-05 21:00"), utc("2026-12-06 05:00"))));
        assert_eq!(containing(&w, utc("2026-12-05 20:59")), None);
        assert_eq!(next_opening(&w, utc("2026-12-02 10:00")), Some(utc("2026-12-05 21:00")));
        // 2026-07-04 is a Saturday; UTC+2 in summer.
        assert_eq!(containing(&w, utc("2026-07-04 20:30")), Some((utc("2026-07-04 20:00"), utc("2026-07-05 04:00"))));
    }

    #[test]
    fn dst_fall_back_does_not_stretch() {
        // Night of 2026-10-24/25: clocks go from 03:00 CEST back to 02:00 CET.
        let w = vec![parse_weekly("Sat 22:00 - Sun 06:00", BERLIN).unwrap()];
        let (open, close) = containing(&w, utc("2026-10-24 21:00")).unwrap();
        assert_eq!(open, utc("2026-10-24 20:00")); // 22:00 CEST
        assert_eq!(close, utc("2026-10-25 05:00")); // 06:00 CET
                                                    // Local 22:00 to 06:00 is 9 real hours that night; the local times are what hold.
        assert_eq!(close - open, 9 * 3600);
        // An ambiguous local close (02:30) takes the earlier instant: never longer.
        let w2 = vec![parse_weekly("Sun 01:00 - 02:30", BERLIN).unwrap()];
        let (o, c) = containing(&w2, utc("2026-10-24 23:30")).unwrap();
        assert_eq!((o, c), (utc("2026-10-24 23:00"), utc("2026-10-25 00:30")));
    }

    #[test]
    fn dst_fall_back_ambiguous_opening_takes_the_later_instant() {
        // 02:30 happens twice on 2026-10-25; the window opens at the second one (CET).
        let w = vec![parse_weekly("Sun 02:30 - 05:00", BERLIN).unwrap()];
        let (o, c) = containing(&w, utc("2026-10-25 02:00")).unwrap();
        assert_eq!(o, utc("2026-10-25 01:30"));
        assert_eq!(c, utc("2026-10-25 04:00"));
        assert_eq!(containing(&w, utc("2026-10-25 00:45")), None);
    }

    #[test]
    fn dst_spring_forward_gap() {
        // 2026-03-29 02:00 CET jumps to 03:00 CEST; a window opening at 02:30 opens at 03:00.
        let w = vec![parse_weekly("Sun 02:30 - 05:00", BERLIN).unwrap()];
        let (o, c) = containing(&w, utc("2026-03-29 01:30")).unwrap();
        assert_eq!(o, utc("2026-03-29 01:00"));
        assert_eq!(c, utc("2026-03-29 03:00"));
    }

    #[test]
    fn weekday_ranges_and_overnight() {
        let w = vec![parse_weekly("Mon-Fri 22:00 - 06:00", chrono_tz::UTC).unwrap()];
        // Friday 23:00 open, closes Saturday 06:00.
        assert_eq!(containing(&w, utc("2026-12-04 23:00")), Some((utc("2026-12-04 22:00"), utc("2026-12-05 06:00"))));
        // Saturday night closed; next opening Monday 22:00.
        assert_eq!(containing(&w, utc("2026-12-05 23:00")), None);
        assert_eq!(next_opening(&w, utc("2026-12-05 23:00")), Some(utc("2026-12-07 22:00")));
    }

    #[test]
    fn one_off_and_errors() {
        let w = vec![parse_once("2026-12-27 06:00", "2026-12-27 18:00", BERLIN).unwrap()];
        assert_eq!(containing(&w, utc("2026-12-27 10:00")), Some((utc("2026-12-27 05:00"), utc("2026-12-27 17:00"))));
        assert_eq!(next_opening(&w, utc("2026-12-28 00:00")), None);
        assert!(parse_weekly("Sat 22:00 Sun 06:00", BERLIN).is_err());
        assert!(parse_weekly("Sut 22:00 - 06:00", BERLIN).is_err());
        assert!(parse_weekly("Sat 25:00 - 06:00", BERLIN).is_err());
        assert!(parse_once("2026-12-27 18:00", "2026-12-27 06:00", BERLIN).is_err());
    }
}
