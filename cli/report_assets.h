/* report_assets -- the report page's script and style (cli/report.js,
 * cli/report.css), as C strings written by scripts/embed-assets. */
#ifndef TALLY_CLI_REPORT_ASSETS_H
#define TALLY_CLI_REPORT_ASSETS_H

extern const char report_js[];
extern const char report_css[];

#endif
