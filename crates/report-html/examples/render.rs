//! Renders a job's `report.json` as `report.html` and `figures/*.svg`:
//! `cargo run -p fedcare-report-html --example render -- out/heart-disease/report.json out/heart-disease/html`

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let (Some(input), Some(out)) = (args.next().map(PathBuf::from), args.next().map(PathBuf::from)) else {
        return Err("usage: render REPORT.json OUT_DIR".into());
    };
    let text = std::fs::read_to_string(&input).map_err(|e| format!("cannot read {}: {e}", input.display()))?;
    let report: fedcare_server::report::Report = serde_json::from_str(&text).map_err(|e| format!("{} is not a job report: {e}", input.display()))?;
    let written = fedcare_report_html::write(&report, &out)?;
    println!("{}", written.html.display());
    for f in &written.figures {
        println!("{}", f.display());
    }
    Ok(())
}
