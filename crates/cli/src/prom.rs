//! Reading Prometheus/OpenMetrics text, as the benches and the demo scrape it from `/metrics`.

/// Sum of the samples of `name` (with `label`, e.g. `source="server"`, among their labels, if
/// given) in Prometheus or OpenMetrics text. Other series that merely start with `name` are not
/// counted.
pub(crate) fn metric_sum(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            if label.is_some_and(|l| !labels.split(',').any(|x| x.trim() == l)) {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOWNLOADED: &str = "shardswarm_torrent_downloaded_bytes_total";

    #[test]
    fn metric_sums_matching_samples_only() {
        let text = "# HELP shardswarm_torrent_downloaded_bytes x\n\
            shardswarm_torrent_downloaded_bytes_total{source=\"server\"} 100\n\
            shardswarm_torrent_downloaded_bytes_total{source=\"peer\"} 250\n\
            shardswarm_torrent_uploaded_bytes_total 7\n\
            shardswarm_torrent_uploaded_bytes_total_other 9\n";
        let down = "shardswarm_torrent_downloaded_bytes_total";
        assert_eq!(metric_sum(text, down, Some("source=\"peer\"")), 250.0);
        assert_eq!(metric_sum(text, down, Some("source=\"server\"")), 100.0);
        assert_eq!(metric_sum(text, down, None), 350.0);
        assert_eq!(
            metric_sum(text, "shardswarm_torrent_uploaded_bytes_total", None),
            7.0
        );
    }

    #[test]
    fn metric_sum_picks_the_series_by_label() {
        let text = "# TYPE shardswarm_torrent_downloaded_bytes counter\n\
            shardswarm_torrent_downloaded_bytes_total{source=\"server\"} 100\n\
            shardswarm_torrent_downloaded_bytes_total{source=\"peer\"} 250\n\
            shardswarm_torrent_downloaded_bytes_total_other 9\n\
            shardswarm_torrent_uploaded_bytes_total 7\n# EOF\n";
        assert_eq!(
            metric_sum(text, DOWNLOADED, Some("source=\"server\"")),
            100.0
        );
        assert_eq!(metric_sum(text, DOWNLOADED, Some("source=\"peer\"")), 250.0);
        assert_eq!(metric_sum(text, DOWNLOADED, None), 350.0);
        assert_eq!(
            metric_sum(text, "shardswarm_torrent_uploaded_bytes_total", None),
            7.0
        );
        assert_eq!(metric_sum("", DOWNLOADED, None), 0.0);
    }
}
