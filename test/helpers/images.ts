export { makeImage, mutateImage, type ImageSpec } from '../../src/demo/sample-image.js';
