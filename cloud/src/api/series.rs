//! `GET /v1/machines/{id}/series`: one sensor over a time range as ONE continuous series, what
//! the dashboard's chart draws. Retention folds raw readings older than `retention.raw` into
//! hourly aggregates and deletes them, so every stored reading is in exactly one of the two:
//! merging both by time gives a series with no overlap (no reading counted twice) and no gap at
//! the retention boundary (the boundary hour is the partly folded aggregate, then the raw
//! readings the fold left). Each point says whether it is hourly. Points outside `[from, until)`
//! are trimmed here, so the chart never has to.

use super::{access, err, internal, AppState};
use crate::people::Actor;
use crate::store::people::Role;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use outpost_shared::model::{HourlyPoint, ReadingPoint, State as Health, Value};
use serde::{Deserialize, Serialize};

/// Longest range one request may ask for: the 400 days of the chart's widest range, with room.
const MAX_RANGE: chrono::Duration = chrono::Duration::days(800);
/// Most raw readings one answer holds (a 10 s sensor's 7 days of raw retention are 60,480).
pub(super) const MAX_RAW: usize = 100_000;
/// When a range has more raw readings than one answer holds, the newest ones are added from this
/// far back, so the chart still reaches `until`; what lies between is named in `omitted`.
const TAIL: chrono::Duration = chrono::Duration::minutes(15);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SeriesQuery {
    sensor: String,
    /// RFC 3339; the start of the range, included.
    from: String,
    /// RFC 3339; the end of the range, excluded; now when absent.
    until: Option<String>,
}

/// One point of the series: a raw reading, or what one hour of readings was folded into.
#[derive(Debug, Serialize, PartialEq)]
pub(super) struct SeriesPoint {
    /// The reading's time; for an hourly point the start of its hour.
    pub ts: DateTime<Utc>,
    /// The reading's value; for an hourly point the hour's average.
    pub value: Value,
    /// The reading's state; hourly aggregates keep none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Health>,
    pub hourly: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Readings folded into an hourly point.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// Readings left out of an answer because the range held more than [`MAX_RAW`].
#[derive(Debug, Serialize, PartialEq)]
pub(super) struct Omitted {
    pub after: DateTime<Utc>,
    pub before: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub(super) struct Series {
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub points: Vec<SeriesPoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub omitted: Option<Omitted>,
}

/// `text` as a time, or what to write instead.
fn instant(name: &str, text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{name}` must be RFC 3339, e.g. 2026-01-31T12:00:00Z ({e})"))
}

pub(super) async fn series(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    Query(q): Query<SeriesQuery>,
) -> Response {
    // Another customer's machine is not found, like one that does not exist.
    if let Err(r) = access::machine(&st, &actor, &id, Role::Viewer, "series").await {
        return r;
    }
    let from = match instant("from", &q.from) {
        Ok(t) => t,
        Err(why) => return err(StatusCode::BAD_REQUEST, why),
    };
    let until = match q.until.as_deref().map(|u| instant("until", u)).transpose() {
        Ok(t) => t.unwrap_or_else(Utc::now),
        Err(why) => return err(StatusCode::BAD_REQUEST, why),
    };
    if until <= from {
        return err(StatusCode::BAD_REQUEST, "`until` must be after `from`");
    }
    if until - from > MAX_RANGE {
        return err(
            StatusCode::BAD_REQUEST,
            format!("a range may span at most {} days", MAX_RANGE.num_days()),
        );
    }
    let store = st.store.clone();
    let r = async move {
        if store.machine(&id).await?.is_none() {
            return Ok::<_, crate::CloudError>(err(StatusCode::NOT_FOUND, "no such machine"));
        }
        let hours = ((until - from).num_hours() + 2) as usize;
        let hourly = store.hourly(&id, &q.sensor, Some(from), hours).await?;
        let mut raw = store.readings(&id, &q.sensor, Some(from), MAX_RAW).await?;
        let mut omitted = None;
        if raw.len() >= MAX_RAW {
            // The store answers by seq, oldest first: add the newest readings so the chart
            // reaches `until`, and name what lies between.
            let last = raw.iter().map(|p| p.ts).max().unwrap_or(from);
            let tail: Vec<ReadingPoint> = store
                .readings(&id, &q.sensor, Some((until - TAIL).max(last)), MAX_RAW)
                .await?
                .into_iter()
                .filter(|p| p.ts > last)
                .collect();
            if let Some(first) = tail.iter().map(|p| p.ts).min() {
                omitted = Some(Omitted { after: last, before: first });
            }
            raw.extend(tail);
        }
        Ok(Json(Series { from, until, points: merge(hourly, raw, from, until), omitted }).into_response())
    };
    match r.await {
        Ok(resp) => resp,
        Err(e) => internal(e),
    }
}

/// Hourly aggregates and raw readings as one series in time order, trimmed to `[from, until)`.
/// A reading is either folded or raw, never both, so interleaving them loses and repeats nothing.
pub(super) fn merge(
    hourly: Vec<HourlyPoint>,
    raw: Vec<ReadingPoint>,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<SeriesPoint> {
    let inside = |ts: DateTime<Utc>| ts >= from && ts < until;
    let mut points: Vec<SeriesPoint> = hourly
        .into_iter()
        .filter(|h| inside(h.ts) && h.avg.is_finite())
        .map(|h| SeriesPoint {
            ts: h.ts,
            value: Value::Number(h.avg),
            state: None,
            hourly: true,
            min: Some(h.min),
            max: Some(h.max),
            count: Some(h.count),
        })
        .chain(raw.into_iter().filter(|p| inside(p.ts)).map(|p| SeriesPoint {
            ts: p.ts,
            value: p.value,
            state: Some(p.state),
            hourly: false,
            min: None,
            max: None,
            count: None,
        }))
        .collect();
    // Stable: at equal times the hour's aggregate comes before the readings it was not made of.
    points.sort_by_key(|p| p.ts);
    points
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, h, m, 0).unwrap()
    }

    fn raw(ts: DateTime<Utc>, v: f64) -> ReadingPoint {
        ReadingPoint { seq: 0, ts, value: Value::Number(v), state: Health::Ok }
    }

    fn hour(ts: DateTime<Utc>, avg: f64) -> HourlyPoint {
        HourlyPoint { ts, min: avg, avg, max: avg, count: 6 }
    }

    #[test]
    fn hourly_then_raw_in_time_order_trimmed_to_the_range() {
        let hourly = vec![hour(at(0, 0), 1.0), hour(at(1, 0), 2.0), hour(at(2, 0), 3.0)];
        // The fold stopped at 02:40: the 02:00 hour is partly an aggregate, partly raw.
        let raw = vec![raw(at(2, 50), 4.0), raw(at(2, 40), 3.5), raw(at(3, 10), 5.0), raw(at(4, 0), 9.0)];
        let s = merge(hourly, raw, at(1, 0), at(4, 0));
        let shown: Vec<(DateTime<Utc>, bool)> = s.iter().map(|p| (p.ts, p.hourly)).collect();
        assert_eq!(
            shown,
            vec![
                (at(1, 0), true),
                (at(2, 0), true),
                (at(2, 40), false),
                (at(2, 50), false),
                (at(3, 10), false)
            ],
            "the 00:00 hour is before the range, the 04:00 reading at its excluded end"
        );
        assert_eq!(s[1].count, Some(6));
        assert_eq!(s[2].state, Some(Health::Ok));
        assert_eq!(s[1].state, None, "an hour has no single state");
    }

    #[test]
    fn texts_and_flags_pass_as_they_are() {
        let p =
            ReadingPoint { seq: 1, ts: at(1, 0), value: Value::Text("running".into()), state: Health::Warn };
        let s = merge(vec![], vec![p], at(0, 0), at(2, 0));
        assert_eq!(s[0].value, Value::Text("running".into()));
        assert!(!s[0].hourly);
    }
}
