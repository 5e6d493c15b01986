// Koop test server: serves every *.geojson file of DATA_DIR as a read-only FeatureServer layer.
//   node server.js DATA_DIR PORT [LOG_LEVEL]
// Layer URL: http://127.0.0.1:PORT/file-geojson/rest/services/<file stem>/FeatureServer/0
// Readiness: GET /status answers {"success":true}.
// Start it with NODE_CONFIG_DIR pointing at an empty folder (koop-core 10.4.19 merges ./config/*.json
// from the cwd over our options) and SUPPRESS_NO_CONFIG_WARNING=1; tests/servers_koop.py does both.
'use strict';
const path = require('path');
const Koop = require('@koopjs/koop-core');
const fileGeojson = require('@koopjs/provider-file-geojson');

const [dataDirArg, portArg, logLevel = 'warn'] = process.argv.slice(2);
const port = Number.parseInt(portArg, 10);
if (!dataDirArg || !Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`usage: node server.js DATA_DIR PORT [LOG_LEVEL]; got data dir ${dataDirArg}, port ${portArg}`);
  process.exit(2);
}
// provider-file-geojson 2.2.0 does path.join(process.cwd(), dataDir), so an absolute path would be
// appended to the cwd: hand it a path relative to the cwd ('.' when they are the same folder).
const dataDir = path.relative(process.cwd(), path.resolve(dataDirArg)) || '.';

const koop = new Koop({ logLevel });
koop.register(fileGeojson, { dataDir });
// Loopback only: the provider can read *.json files outside the data dir through an encoded '..%2F'.
const server = koop.server.listen(port, '127.0.0.1', () => {
  console.log(`koop listening on http://127.0.0.1:${port} serving ${path.resolve(dataDirArg)}`);
});
server.on('error', (err) => {
  console.error(`koop could not listen on 127.0.0.1:${port}: ${err.message}`);
  process.exit(1);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
