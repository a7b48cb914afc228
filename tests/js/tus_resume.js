// A stock tus client (tus-js-client, Node) uploads a file with its own retry logic, while the
// server is killed with SIGKILL mid-upload and started again at the same address.
// Driven by tests/tests/tus.rs: argv BASE_URL SECRET FILE KEY CHUNK_BYTES; TUS_JS_CLIENT names
// the module. Prints "CHUNK <bytes accepted>" per chunk, "DONE <url>" at the end.
const tus = require(process.env.TUS_JS_CLIENT || 'tus-js-client')
const fs = require('fs')

const [base, secret, path, key, chunk] = process.argv.slice(2)
const upload = new tus.Upload(fs.readFileSync(path), {
  endpoint: base + '/uploads',
  headers: { Authorization: 'Bearer ' + secret },
  chunkSize: Number(chunk),
  metadata: { key },
  retryDelays: [250, 500, 1000, 1000, 2000, 2000, 3000, 3000, 5000, 5000, 5000],
  onChunkComplete: (size, accepted) => console.log('CHUNK', accepted),
  onError: (e) => {
    console.log('ERROR', String(e))
    process.exit(1)
  },
  onSuccess: () => console.log('DONE', upload.url),
})
upload.start()
