//! Why a sensor set could not be built. Sampling itself never fails: a sensor that cannot read
//! its value reports `unknown` or `error` with a message instead.

use outpost_shared::config::Problem;

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("invalid sensor configuration:\n{}", render(.0))]
    Invalid(Vec<Problem>),
    #[error("sensor `{id}`: cannot load the CA file: {source}")]
    Tls {
        id: String,
        #[source]
        source: outpost_shared::tls::TlsError,
    },
    #[error("sensor `{id}`: cannot build the HTTP client: {source}")]
    HttpClient {
        id: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the hub is stopping; sensors are not changed any more")]
    Stopping,
}

fn render(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
}
