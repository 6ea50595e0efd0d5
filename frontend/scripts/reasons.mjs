// The page renders reasons with the server's own texts: copy them from the Python package
// (jupyter_idle_ext/reasons.json) before each build, type-check and test.
import { copyFileSync } from 'node:fs';

copyFileSync('../jupyter_idle_ext/reasons.json', 'src/reasons.json');
