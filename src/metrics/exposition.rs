//! The Prometheus text exposition format: `# HELP`, `# TYPE`, then one line per sample,
//! labels escaped. Each family is written once, with all its samples together (the
//! format requires it).

use std::fmt::Write;

use super::Histogram;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A scrape's text being written.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn new() -> Self {
        Exposition {
            text: String::with_capacity(16 << 10),
        }
    }

    /// Starts a family. Counters' names end in `_total`; the name is written as given.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.name());
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.text.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.text, " {}", number(value));
        self
    }

    /// A histogram's `_bucket`, `_sum` and `_count` samples (the family is `name`).
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        histogram: &Histogram,
    ) -> &mut Self {
        let cumulative = histogram.cumulative();
        for (i, count) in cumulative.iter().enumerate() {
            let bound = histogram
                .bounds()
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| number(*b));
            let _ = write!(self.text, "{name}_bucket");
            self.labels(labels, Some(&bound));
            let _ = writeln!(self.text, " {count}");
        }
        let _ = write!(self.text, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(self.text, " {}", number(histogram.sum_seconds()));
        let _ = write!(self.text, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.text, " {}", histogram.count());
        self
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.text.push('{');
        let mut first = true;
        for (key, value) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
            if !first {
                self.text.push(',');
            }
            first = false;
            let _ = write!(self.text, "{key}=\"{}\"", escape_label(value));
        }
        self.text.push('}');
    }

    pub fn finish(self) -> String {
        self.text
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text escapes backslash and newline.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Integers without a fraction, others as Rust prints them, infinities as Prometheus does.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaped_labels() {
        let mut e = Exposition::new();
        e.family(
            "exo_requests_total",
            Kind::Counter,
            "Requests.\nBy outcome.",
        )
        .sample("exo_requests_total", &[("outcome", "ok")], 3.0)
        .sample("exo_requests_total", &[("outcome", "a\"b\\c\nd")], 0.5);
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP exo_requests_total Requests.\\nBy outcome.\n# TYPE exo_requests_total counter\nexo_requests_total{outcome=\"ok\"} 3\nexo_requests_total{outcome=\"a\\\"b\\\\c\\nd\"} 0.5\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_with_inf() {
        let h = Histogram::new(&[0.5, 1.0]);
        h.observe(std::time::Duration::from_millis(200));
        h.observe(std::time::Duration::from_secs(2));
        let mut e = Exposition::new();
        e.family("x_seconds", Kind::Histogram, "x")
            .histogram("x_seconds", &[("peer", "p")], &h);
        let text = e.finish();
        assert!(text.contains("x_seconds_bucket{peer=\"p\",le=\"0.5\"} 1\n"));
        assert!(text.contains("x_seconds_bucket{peer=\"p\",le=\"1\"} 1\n"));
        assert!(text.contains("x_seconds_bucket{peer=\"p\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("x_seconds_sum{peer=\"p\"} 2.2\n"));
        assert!(text.contains("x_seconds_count{peer=\"p\"} 2\n"));
    }
}
