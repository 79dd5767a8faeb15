package storage

import "sync"

// cryptJob is one chunk travelling through a pipeline.
type cryptJob struct {
	idx   uint64
	final bool
	in    []byte
	at    int64 // where fn reads in from, when it does (lentStream)
	// lentStream's hashing in order: prev is closed once the chunk before
	// was hashed, hashed once this one was.
	prev, hashed chan struct{}
	out          []byte
	err          error
	done         chan struct{} // closed when fn has run
}

// pipeline runs fn on jobs on several goroutines and hands them back in the order they
// were submitted: one producer calls submit (then close), one consumer calls next. Either
// side may call stop to make the producer give up.
type pipeline struct {
	fn        func(*cryptJob)
	work      chan *cryptJob
	order     chan *cryptJob
	quit      chan struct{}
	quitOnce  sync.Once
	closeOnce sync.Once
	free      chan *cryptJob // recycled jobs and their buffers (a sync.Pool loses them at each GC)
}

func newPipeline(workers, depth int, fn func(*cryptJob)) *pipeline {
	p := &pipeline{fn: fn, work: make(chan *cryptJob, depth), order: make(chan *cryptJob, depth),
		quit: make(chan struct{}), free: make(chan *cryptJob, depth+workers+2)}
	for range workers {
		go func() {
			for j := range p.work {
				p.fn(j)
				close(j.done)
			}
		}()
	}
	return p
}

// job returns a fresh or recycled job (its buffers may be reused).
func (p *pipeline) job() *cryptJob {
	var j *cryptJob
	select {
	case j = <-p.free:
	default:
		j = &cryptJob{}
	}
	j.done, j.err, j.final = make(chan struct{}), nil, false
	return j
}

// recycle returns a job the consumer is done with.
func (p *pipeline) recycle(j *cryptJob) {
	select {
	case p.free <- j:
	default:
	}
}

// submit queues j; false if the pipeline was stopped.
func (p *pipeline) submit(j *cryptJob) bool {
	select {
	case p.order <- j:
	case <-p.quit:
		return false
	}
	p.work <- j // workers never block, so this only waits for a free slot briefly
	return true
}

// next returns the next job in submission order once fn has run on it; false when the
// producer has closed the pipeline and every job was handed out.
func (p *pipeline) next() (*cryptJob, bool) {
	j, ok := <-p.order
	if !ok {
		return nil, false
	}
	<-j.done
	return j, true
}

// drain waits until every queued job has run, discarding them: after it
// no worker touches the jobs' buffers. The producer must be done.
func (p *pipeline) drain() {
	for {
		if _, ok := p.next(); !ok {
			return
		}
	}
}

// close is called by the producer after its last submit.
func (p *pipeline) close() {
	p.closeOnce.Do(func() { close(p.order); close(p.work) })
}

// stop makes pending and later submits return false.
func (p *pipeline) stop() { p.quitOnce.Do(func() { close(p.quit) }) }
