//! The `/metrics` text every vbs process serves (Prometheus text format 0.0.4), written by
//! `prometheus-client`. A process computes its figures at scrape time and hands them to
//! [`render`] as metric families; the crate writes the names, labels and escaping.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The content type of the text format.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// One histogram's figures: per-bucket counts (not cumulative) under each upper bound, the
/// count past the last bound, and the sum of the observations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, u64)>,
    pub overflow: u64,
    pub sum: f64,
}

impl Histogram {
    fn count(&self) -> u64 {
        self.buckets.iter().map(|(_, n)| n).sum::<u64>() + self.overflow
    }
}

/// The metric families of one scrape, written in the order they are added. A family with no
/// samples still shows its `# HELP` and `# TYPE` lines, so a scraper learns it exists.
pub struct Families<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl Families<'_> {
    /// A gauge with one unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        self.encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_gauge(&value)
    }

    /// A gauge with one sample per label set.
    pub fn gauges<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, u64)>,
    ) -> fmt::Result {
        let mut family = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in samples {
            family.encode_family(&labels)?.encode_gauge(&value)?;
        }
        Ok(())
    }

    /// A counter with one unlabelled sample. `name` ends in `_total`, as counters' names do.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        self.encoder
            .encode_descriptor(counter_base(name), help, None, MetricType::Counter)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)
    }

    /// A counter with one sample per label set. `name` ends in `_total`.
    pub fn counters<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, u64)>,
    ) -> fmt::Result {
        let mut family =
            self.encoder
                .encode_descriptor(counter_base(name), help, None, MetricType::Counter)?;
        for (labels, value) in samples {
            family
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }

    /// A histogram with one series per label set.
    pub fn histograms<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, Histogram)>,
    ) -> fmt::Result {
        let mut family = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in samples {
            let mut buckets = h.buckets.clone();
            buckets.push((f64::INFINITY, h.overflow));
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(h.sum, h.count(), &buckets, None)?;
        }
        Ok(())
    }
}

/// `prometheus-client` adds `_total` to a counter's name itself.
fn counter_base(name: &str) -> &str {
    debug_assert!(name.ends_with("_total"), "a counter named {name}");
    name.strip_suffix("_total").unwrap_or(name)
}

/// The text of one scrape: `write` adds the families, computed from what it captured.
pub fn render<F>(write: F) -> String
where
    F: Fn(&mut Families<'_>) -> fmt::Result + Send + Sync + 'static,
{
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(write)));
    let mut text = String::new();
    // Writing to a String cannot fail, nor can the families, which only write.
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("the metrics text is written to memory");
    text
}

/// A scrape's families as `prometheus-client` collects them.
struct Scrape<F>(F);

impl<F> fmt::Debug for Scrape<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

impl<F> Collector for Scrape<F>
where
    F: Fn(&mut Families<'_>) -> fmt::Result + Send + Sync + 'static,
{
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        (self.0)(&mut Families { encoder })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_written_in_order_with_their_labels_escaped() {
        let text = render(|out| {
            out.gauge("g", "A gauge\\with a backslash.", 7)?;
            out.gauges("l", "Labelled.", [([("k", "x\"y\nz")], 3)])?;
            out.counters("c_total", "A counter.", [([("surface", "api")], 2)])?;
            out.gauges(
                "empty",
                "No samples.",
                std::iter::empty::<([(&str, &str); 1], u64)>(),
            )
        });
        assert_eq!(
            text,
            "# HELP g A gauge\\\\with a backslash.\n# TYPE g gauge\ng 7\n\
             # HELP l Labelled.\n# TYPE l gauge\nl{k=\"x\\\"y\\nz\"} 3\n\
             # HELP c_total A counter.\n# TYPE c_total counter\nc_total{surface=\"api\"} 2\n\
             # HELP empty No samples.\n# TYPE empty gauge\n"
        );
    }

    #[test]
    fn a_histogram_is_cumulative_and_ends_at_infinity() {
        let h = Histogram {
            buckets: vec![(0.001, 2), (0.01, 1)],
            overflow: 1,
            sum: 0.5,
        };
        let text =
            render(move |out| out.histograms("h", "Latency.", [([("op", "read")], h.clone())]));
        assert_eq!(
            text,
            "# HELP h Latency.\n# TYPE h histogram\n\
             h_bucket{op=\"read\",le=\"0.001\"} 2\n\
             h_bucket{op=\"read\",le=\"0.01\"} 3\n\
             h_bucket{op=\"read\",le=\"+Inf\"} 4\n\
             h_sum{op=\"read\"} 0.5\n\
             h_count{op=\"read\"} 4\n"
        );
    }
}
