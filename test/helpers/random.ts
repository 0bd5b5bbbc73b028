export { seededRandom } from '../../src/demo/sample-image.js';
