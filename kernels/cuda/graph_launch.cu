// The launcher of a device graph (kernels/cupy/device_graph.py). The host replays a graph of this
// one kernel; it tail-launches the decode step's graph, instantiated for device launch and
// uploaded once. The tail launch starts when the launcher's graph completes, and the host
// launch only completes when the tail launch has (it runs in the same stream environment),
// so whatever is queued on the stream after a replay still waits for the whole step.
// Built relocatable (-rdc) and linked with the device runtime (cudadevrt).
//
// A launch that fails traps: the step would otherwise silently not run, and the tokens of
// a step that never ran are whatever the buffers held.
extern "C" __global__ void launch_device_graph(cudaGraphExec_t step) {
    const cudaError_t err = cudaGraphLaunch(step, cudaStreamGraphTailLaunch);
    if (err != cudaSuccess) {
        printf("launch_device_graph: cudaGraphLaunch failed with CUDA error %d\n", (int)err);
        __trap();
    }
}
